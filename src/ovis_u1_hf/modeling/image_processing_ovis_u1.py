# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""Image processor of Ovis-U1: native-resolution resizing and 2x2-grouped patches for the AIMv2 encoder."""

import math
from functools import lru_cache

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ChannelDimension, PILImageResampling, load_image
from transformers.processing_utils import ImagesKwargs
from transformers.utils import TensorType, is_torch_tensor, is_torchvision_available


MAX_ASPECT_RATIO = 200


class OvisU1ImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    min_pixels (`int`, *optional*, defaults to `448 * 448`):
        Smallest number of pixels of a resized image; the same as `size["shortest_edge"]`.
    max_pixels (`int`, *optional*, defaults to `1792 * 1792`):
        Largest number of pixels of a resized image; the same as `size["longest_edge"]`.
    patch_size (`int`, *optional*, defaults to 14):
        Side of a square patch of the vision encoder.
    hidden_stride (`int`, *optional*, defaults to 2):
        Side of the square group of neighbouring patches merged into one visual token.
    temporal_patch_size (`int`, *optional*, defaults to 1):
        Frames per patch along time; a still image fills every frame.
    """

    min_pixels: int
    max_pixels: int
    patch_size: int
    hidden_stride: int
    temporal_patch_size: int


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 448 * 448, max_pixels: int = 1792 * 1792
) -> tuple[int, int]:
    """
    Size `(height, width)` to resize an image to: both sides multiples of `factor`, about the same aspect ratio, and
    (except for the extreme cases below) between `min_pixels` and `max_pixels` pixels. This is the Qwen2-VL rule with
    the released Ovis-U1 handling of small and elongated images:

    - A side shorter than `factor` is scaled up to `factor`, the other side following (rounded), so a 1x1 image
      becomes 28x28 before the pixel limits apply (and then 448x448 with the default limits).
    - Otherwise an aspect ratio above 200 is clamped: the long side is cut to 200 times the short side. (As in the
      released code, the two rules exclude each other: a 10x10000 image is only scaled up, to 28x28000.)
    - Each side is rounded to a multiple of `factor`; an area above `max_pixels` is scaled down (sides floored), an
      area below `min_pixels` scaled up (sides ceiled), keeping the aspect ratio.
    - Only where the released code would return a zero side (a scaled-down image thinner than `factor`, aspect ratio
      above `max_pixels / factor**2`), that side becomes `factor` and the other the longest multiple of `factor` that
      keeps the area within `max_pixels`.

    Args:
        height (`int`):
            Height of the image.
        width (`int`):
            Width of the image.
        factor (`int`, *optional*, defaults to 28):
            Both returned sides are multiples of it: `patch_size * hidden_stride` for the encoder.
        min_pixels (`int`, *optional*, defaults to `448 * 448`):
            Smallest area of the returned size.
        max_pixels (`int`, *optional*, defaults to `1792 * 1792`):
            Largest area of the returned size.

    Returns:
        `tuple[int, int]`: the resized `(height, width)`.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"An image needs a positive height and width, got {height}x{width}.")
    if height < factor or width < factor:
        if height < width:
            height, width = factor, round(factor / height * width)
        else:
            height, width = round(factor / width * height), factor
    elif max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        if height > width:
            height = MAX_ASPECT_RATIO * width
        else:
            width = MAX_ASPECT_RATIO * height

    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
        if h_bar == 0 or w_bar == 0:
            long_side = max(factor, max_pixels // factor // factor * factor)
            h_bar, w_bar = (factor, long_side) if h_bar == 0 else (long_side, factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_pil_image(image) -> PIL.Image.Image:
    """
    Returns `image` as a PIL image, upright (its EXIF orientation applied).

    Args:
        image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or `str`):
            A PIL image; a `uint8` array laid out `(height, width)` or `(height, width, channels)` (channels 1, 3 or
            4); a `uint8` tensor laid out `(height, width)` or `(channels, height, width)` (the torchvision layout);
            or a local path, URL or base64 string.
    """
    if isinstance(image, str):
        image = load_image(image)
    elif not isinstance(image, PIL.Image.Image):
        image = PIL.Image.fromarray(_to_uint8_hwc(image))
    if image.width == 0 or image.height == 0:
        raise ValueError(f"Got an empty image of size {image.width}x{image.height}.")
    # The released code ignores the EXIF orientation; we feed the image as it is displayed, like `load_image` does.
    return PIL.ImageOps.exif_transpose(image)


def _check_uint8_image(image) -> str:
    """Checks an array or tensor image as [`to_pil_image`] takes it; returns `"array"` or `"tensor"`."""
    if is_torch_tensor(image):
        kind, dtype = "tensor", str(image.dtype).removeprefix("torch.")
    elif isinstance(image, np.ndarray):
        kind, dtype = "array", str(image.dtype)
    else:
        raise TypeError(
            f"Unsupported image type {type(image).__name__}: expected a PIL image, a numpy array, a torch tensor or a "
            "path/URL string."
        )
    if dtype != "uint8":
        raise ValueError(
            f"Expected a uint8 image {kind} (values 0-255), got dtype {dtype}. Scale and cast it first, e.g. "
            "`(x * 255).round()` then to uint8."
        )
    if image.ndim not in (2, 3):
        raise ValueError(f"Expected one image with 2 or 3 dimensions, got a {kind} of shape {tuple(image.shape)}.")
    if kind == "tensor":
        if image.ndim == 3 and image.shape[0] not in (1, 3, 4):
            raise ValueError(
                f"Expected an image tensor laid out (channels, height, width) with 1, 3 or 4 channels, got shape "
                f"{tuple(image.shape)}. A channels-last tensor needs `.permute(2, 0, 1)`."
            )
        height, width = image.shape[-2:]
    else:
        if image.ndim == 3 and image.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"Expected an image array laid out (height, width, channels) with 1, 3 or 4 channels, got shape "
                f"{image.shape}. A channels-first array needs `.transpose(1, 2, 0)`."
            )
        height, width = image.shape[:2]
    if height == 0 or width == 0:  # checked here: older Pillow fails obscurely on empty arrays
        raise ValueError(f"Got an empty image of size {width}x{height}.")
    return kind


def _to_uint8_hwc(image) -> np.ndarray:
    if _check_uint8_image(image) == "tensor":
        array = image.detach().cpu().numpy()
        array = array.transpose(1, 2, 0) if array.ndim == 3 else array
    else:
        array = image
    return np.ascontiguousarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)


def convert_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """
    Converts a PIL image of any mode to RGB the way the released model does: Pillow's `convert("RGB")`, so
    transparency is DROPPED (each pixel keeps its colour whatever its alpha), not composited onto white. The one
    exception is 16-bit images, which Pillow would clip at 255; their full range is mapped to 8 bits instead.

    Args:
        image (`PIL.Image.Image`):
            The image to convert.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        image = PIL.Image.fromarray((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8))
    return image.convert("RGB")


def fit_image(image, width: int, height: int) -> PIL.Image.Image:
    """
    Fits an image to exactly `width` x `height` as the released pipelines do: scale it (Pillow bicubic) by
    `r = max(width / w, height / h)` to `(int(r * w), int(r * h))`, then crop the centre with
    `left = round((w' - width) / 2)` and `top = round((h' - height) / 2)` (Python rounding). If truncation left the
    scaled image a pixel short, the missing row or column is black. The EXIF orientation is applied first; the mode
    is kept.

    Args:
        image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`):
            The image, in any layout [`to_pil_image`] takes.
        width (`int`):
            Width of the result.
        height (`int`):
            Height of the result.

    Returns:
        `PIL.Image.Image`: the fitted image, of size `(width, height)`.
    """
    image = to_pil_image(image)
    scale = max(width / image.width, height / image.height)
    image = image.resize((int(scale * image.width), int(scale * image.height)), resample=PIL.Image.Resampling.BICUBIC)
    left = round((image.width - width) / 2)
    top = round((image.height - height) / 2)
    # Pillow fills a crop box reaching outside the image with zeros.
    return image.crop((left, top, left + width, top + height))


# Pillow's resampling (libImaging/Resample.c), written with torch so that it runs on any device and gives Pillow's
# bytes: coefficients computed in float64 exactly as Pillow computes them, rounded to 22-bit fixed point, a horizontal
# then a vertical pass in 32-bit integers, each rounded and clipped to 8 bits.
PRECISION_BITS = 32 - 8 - 2
# Pillow's Hamming window uses float (not double) constants.
HAMMING_A, HAMMING_B = float(np.float32(0.54)), float(np.float32(0.46))


def _box_filter(x: np.ndarray) -> np.ndarray:
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


def _bilinear_filter(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic_filter(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _hamming(x: float) -> float:
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x = x * math.pi
    return math.sin(x) / x * (HAMMING_A + HAMMING_B * math.cos(x))


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


# Filter and support of each convolution filter; the sine-based ones with the C library's sine, as Pillow has it.
PILLOW_FILTERS = {
    PILImageResampling.BOX: (_box_filter, 0.5),
    PILImageResampling.BILINEAR: (_bilinear_filter, 1.0),
    PILImageResampling.HAMMING: (np.vectorize(_hamming, otypes=[np.float64]), 1.0),
    PILImageResampling.BICUBIC: (_bicubic_filter, 2.0),
    PILImageResampling.LANCZOS: (np.vectorize(_lanczos, otypes=[np.float64]), 3.0),
}


@lru_cache(maxsize=128)
def _pillow_coefficients(in_size: int, out_size: int, resample: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each output pixel, the input pixels it reads (`(out_size, taps)`) and their fixed-point weights."""
    filter_fn, support = PILLOW_FILTERS[PILImageResampling(resample)]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = support * filter_scale
    taps = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - first
    offsets = np.arange(taps)
    positions = (first[:, None] + offsets).astype(np.float64)
    weights = filter_fn((positions - center[:, None] + 0.5) * (1.0 / filter_scale))
    weights = np.where(offsets < count[:, None], weights, 0.0)
    total = np.zeros(out_size)
    for tap in range(taps):  # summed in Pillow's order
        total = total + weights[:, tap]
    weights = np.divide(weights, total[:, None], out=weights.copy(), where=total[:, None] != 0.0)
    one = 1 << PRECISION_BITS
    fixed = np.where(weights < 0, np.trunc(-0.5 + weights * one), np.trunc(0.5 + weights * one))
    index = np.minimum(first[:, None] + offsets, in_size - 1)  # past `count` the weight is 0
    return torch.from_numpy(index), torch.from_numpy(fixed.astype(np.int32))


def _pillow_pass(pixels: torch.Tensor, out_size: int, resample: int) -> torch.Tensor:
    """Resamples dim 0 of int32 pixels (8-bit values) to `out_size`."""
    index, weights = (x.to(pixels.device) for x in _pillow_coefficients(pixels.shape[0], out_size, int(resample)))
    shape = (out_size, *pixels.shape[1:])
    total = torch.full(shape, 1 << (PRECISION_BITS - 1), dtype=torch.int32, device=pixels.device)
    tap_values = torch.empty_like(total)
    for tap in range(index.shape[1]):
        torch.index_select(pixels, 0, index[:, tap], out=tap_values)
        total.add_(tap_values.mul_(weights[:, tap].view(-1, *(1,) * (pixels.ndim - 1))))
    return total.clamp_(0, (1 << (PRECISION_BITS + 8)) - 1) >> PRECISION_BITS


def pillow_resize(
    pixels: torch.Tensor, height: int, width: int, resample: PILImageResampling = PILImageResampling.BICUBIC
) -> torch.Tensor:
    """
    Resizes uint8 pixels `(..., H, W)` to `(..., height, width)` as Pillow's `Image.resize` does, to the byte.

    Args:
        pixels (`torch.Tensor`):
            uint8 pixels, on any device.
        height (`int`):
            Height of the result.
        width (`int`):
            Width of the result.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BICUBIC`):
            One of Pillow's convolution filters: `BOX`, `BILINEAR`, `HAMMING`, `BICUBIC` or `LANCZOS`.
    """
    if resample not in PILLOW_FILTERS:
        raise ValueError(
            f"Resizing tensors supports Pillow's convolution filters ({', '.join(f.name for f in PILLOW_FILTERS)}), "
            f"not {PILImageResampling(resample).name}: use OvisU1ImageProcessor for it."
        )
    if pixels.dtype != torch.uint8:
        raise ValueError(f"Expected uint8 pixels, got {pixels.dtype}.")
    out = pixels.to(torch.int32)
    # As Pillow: the horizontal pass first, each pass only where the size changes.
    if width != pixels.shape[-1]:
        out = _pillow_pass(out.movedim(-1, 0).contiguous(), width, resample).movedim(0, -1)
    if height != pixels.shape[-2]:
        out = _pillow_pass(out.movedim(-2, 0).contiguous(), height, resample).movedim(0, -2)
    return out.to(torch.uint8)


DEFAULT_SIZE = {"shortest_edge": 448 * 448, "longest_edge": 1792 * 1792}


def pixel_budget(size: dict[str, int], min_pixels: int | None = None, max_pixels: int | None = None) -> dict[str, int]:
    """The pixel budget `{"shortest_edge": min_pixels, "longest_edge": max_pixels}` from `size` and the released
    names, which take precedence."""
    if min_pixels is not None and max_pixels is not None:
        # The released preprocessor_config.json names both, beside a CLIP `size` that does not apply here.
        budget = {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}
    elif set(size) != {"shortest_edge", "longest_edge"}:
        raise ValueError(
            "size must hold the pixel budget as {'shortest_edge': min_pixels, 'longest_edge': max_pixels}, "
            f"got {size}."
        )
    else:
        budget = {
            "shortest_edge": int(size["shortest_edge"] if min_pixels is None else min_pixels),
            "longest_edge": int(size["longest_edge"] if max_pixels is None else max_pixels),
        }
    if not 0 < budget["shortest_edge"] <= budget["longest_edge"]:
        raise ValueError(
            f"The pixel budget needs 0 < shortest_edge (min_pixels) <= longest_edge (max_pixels), got {budget}."
        )
    return budget


def rescale_and_normalize(
    pixels: np.ndarray,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    image_mean: np.ndarray,
    image_std: np.ndarray,
) -> np.ndarray:
    """uint8 pixels, channels last, to float32 model inputs."""
    if do_rescale:
        # In float64, then float32, as transformers' `rescale` (so the released preprocessing) computes it.
        pixels = pixels.astype(np.float64) * rescale_factor
    pixels = pixels.astype(np.float32)
    if do_normalize:
        pixels = (pixels - image_mean) / image_std
    return pixels


def in_default_layout(image, input_data_format: str | ChannelDimension | None):
    """An array or tensor image in its kind's default layout (arrays channels-last, tensors channels-first)."""
    if input_data_format is None or not (isinstance(image, np.ndarray) or is_torch_tensor(image)) or image.ndim != 3:
        return image
    layout = ChannelDimension(input_data_format)
    if isinstance(image, np.ndarray) and layout == ChannelDimension.FIRST:
        return image.transpose(1, 2, 0)
    if is_torch_tensor(image) and layout == ChannelDimension.LAST:
        return image.permute(2, 0, 1)
    return image


def patchify(
    pixels: torch.Tensor, patch_size: int, hidden_stride: int, temporal_patch_size: int
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The patches `(grid_h * grid_w, channels * temporal_patch_size * patch_size**2)` of one image `(channels,
    height, width)` and its `(t, grid_h, grid_w)`: each `hidden_stride` x `hidden_stride` group of patches consecutive,
    the groups in raster order (the order of the released processor)."""
    channels, height, width = pixels.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    frames = pixels.expand(temporal_patch_size, channels, height, width)
    patches = frames.reshape(
        1,
        temporal_patch_size,
        channels,
        grid_h // hidden_stride,
        hidden_stride,
        patch_size,
        grid_w // hidden_stride,
        hidden_stride,
        patch_size,
    )
    # (t, gh/s, gw/s, s, s, C, tp, p, p)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    patches = patches.reshape(grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)
    return patches, (1, grid_h, grid_w)


class OvisU1ImageProcessor(BaseImageProcessor):
    r"""
    Constructs an Ovis-U1 image processor. Each image is processed alone at (about) its native resolution: EXIF
    orientation applied, converted to RGB, resized with [`smart_resize`] to multiples of `patch_size * hidden_stride`,
    rescaled, normalized, and cut into patches. Patches are ordered so that each `hidden_stride x hidden_stride`
    group of neighbouring patches (one visual token) is consecutive, groups in raster order. The rows of all images
    are concatenated; `image_grid_thw` gives each image's `(t, grid_h, grid_w)` in patches.

    Args:
        do_convert_rgb (`bool`, *optional*, defaults to `True`):
            Whether to convert images to RGB with [`convert_to_rgb`] (transparency dropped, as the released model
            does). Without it, images must already have 3 channels.
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize with [`smart_resize`]. Without it, the sides must already be multiples of
            `patch_size * hidden_stride`.
        size (`dict[str, int]`, *optional*, defaults to `{"shortest_edge": 448**2, "longest_edge": 1792**2}`):
            The pixel budget of a resized image, as for transformers' native-resolution processors (Qwen2-VL):
            `shortest_edge` is the smallest number of pixels, `longest_edge` the largest. `min_pixels` and
            `max_pixels` (the released names) set the same two numbers.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BICUBIC`):
            Pillow filter of the resize.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply pixel values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1 / 255`):
            Scale of the rescale.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalize with `image_mean` and `image_std`.
        image_mean (`list[float]`, *optional*, defaults to the OpenAI CLIP mean):
            Per-channel mean subtracted when normalizing.
        image_std (`list[float]`, *optional*, defaults to the OpenAI CLIP std):
            Per-channel standard deviation divided by when normalizing.
        min_pixels (`int`, *optional*):
            Overrides `size["shortest_edge"]`.
        max_pixels (`int`, *optional*):
            Overrides `size["longest_edge"]`.
        patch_size (`int`, *optional*, defaults to 14):
            Side of a square patch of the vision encoder.
        hidden_stride (`int`, *optional*, defaults to 2):
            Side of the square group of neighbouring patches merged into one visual token.
        temporal_patch_size (`int`, *optional*, defaults to 1):
            Frames per patch along time; a still image fills every frame.
    """

    model_input_names = ["pixel_values", "image_grid_thw"]
    valid_kwargs = OvisU1ImageProcessorKwargs
    # Exposed on the class so that the diffusion pipelines reach them through their processor component.
    smart_resize = staticmethod(smart_resize)
    fit_image = staticmethod(fit_image)
    to_pil_image = staticmethod(to_pil_image)
    convert_to_rgb = staticmethod(convert_to_rgb)

    def __init__(
        self,
        do_convert_rgb: bool = True,
        do_resize: bool = True,
        size: dict[str, int] | None = None,
        resample: PILImageResampling = PILImageResampling.BICUBIC,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        patch_size: int = 14,
        hidden_stride: int = 2,
        temporal_patch_size: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.do_convert_rgb = do_convert_rgb
        self.do_resize = do_resize
        self.size = pixel_budget(size or DEFAULT_SIZE, min_pixels, max_pixels)
        self.resample = resample
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean if image_mean is not None else OPENAI_CLIP_MEAN)
        self.image_std = list(image_std if image_std is not None else OPENAI_CLIP_STD)
        self.patch_size = patch_size
        self.hidden_stride = hidden_stride
        self.temporal_patch_size = temporal_patch_size

    # The released names of the pixel budget, read by the pipelines; `size` holds the numbers.
    @property
    def min_pixels(self) -> int:
        return self.size["shortest_edge"]

    @property
    def max_pixels(self) -> int:
        return self.size["longest_edge"]

    def to_dict(self) -> dict:
        output = super().to_dict()
        # `register_for_auto_class` names one class in `auto_map`; a saved folder names both backends, so that
        # `AutoImageProcessor`'s `backend` (or `use_fast`) chooses between them where the folder's code is loaded.
        if "AutoImageProcessor" in (output.get("auto_map") or {}):
            module = type(self).__module__.split(".")[-1]
            classes = {backend: f"{module}.{cls.__name__}" for backend, cls in IMAGE_PROCESSOR_BACKENDS.items()}
            output["auto_map"] = {**output["auto_map"], "AutoImageProcessor": classes}
        return output

    def preprocess(
        self,
        images,
        do_convert_rgb: bool | None = None,
        do_resize: bool | None = None,
        size: dict[str, int] | None = None,
        resample: PILImageResampling | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        patch_size: int | None = None,
        hidden_stride: int | None = None,
        temporal_patch_size: int | None = None,
        input_data_format: str | ChannelDimension | None = None,
        return_tensors: str | TensorType | None = None,
    ) -> BatchFeature:
        """
        Preprocesses one image or a list of images. Every argument but `images`, `input_data_format` and
        `return_tensors` defaults to the attribute of the same name (see the class docstring).

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, `str`, or a list of them):
                The images, in any layout [`to_pil_image`] takes. A 4-dimensional array or tensor is a batch.
            input_data_format (`str` or `ChannelDimension`, *optional*):
                `"channels_first"` or `"channels_last"`: the layout of array and tensor images. By default arrays
                are channels-last and tensors channels-first (numpy's and torchvision's conventions).
            return_tensors (`str` or [`~utils.TensorType`], *optional*):
                `"pt"` for PyTorch tensors, `"np"` or `None` for numpy arrays.

        Returns:
            [`BatchFeature`]: with
            - **pixel_values** -- float32 `(num_patches, channels * temporal_patch_size * patch_size**2)`, the
              patches of all images, image after image.
            - **image_grid_thw** -- int64 `(num_images, 3)`: each image's `(t, grid_h, grid_w)` in patches; its rows in
              `pixel_values` number `t * grid_h * grid_w` and it makes `t * grid_h * grid_w // hidden_stride**2`
              visual tokens.
        """
        settings = self._settings(
            do_convert_rgb=do_convert_rgb,
            do_resize=do_resize,
            size=pixel_budget(size or self.size, min_pixels, max_pixels),
            resample=resample,
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
            patch_size=patch_size,
            hidden_stride=hidden_stride,
            temporal_patch_size=temporal_patch_size,
        )
        all_patches, image_grid_thw = [], []
        for image in self._image_list(images):
            image = to_pil_image(in_default_layout(image, input_data_format))
            if settings["do_convert_rgb"]:
                image = convert_to_rgb(image)
            height, width = self._target_size(image.height, image.width, settings)
            if (height, width) != (image.height, image.width):
                image = image.resize((width, height), resample=settings["resample"])
            pixels = np.asarray(image)
            if pixels.ndim != 3 or pixels.shape[-1] != 3:
                raise ValueError(
                    f"Expected a 3-channel image, got mode {image.mode}; use `do_convert_rgb=True` to convert it."
                )
            pixels = rescale_and_normalize(pixels, **self._value_settings(settings)).transpose(2, 0, 1)
            patches, grid_thw = patchify(
                torch.from_numpy(pixels),
                settings["patch_size"],
                settings["hidden_stride"],
                settings["temporal_patch_size"],
            )
            all_patches.append(patches.numpy())
            image_grid_thw.append(grid_thw)

        data = {"pixel_values": np.concatenate(all_patches), "image_grid_thw": np.array(image_grid_thw, dtype=np.int64)}
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _settings(self, **overrides) -> dict:
        """The preprocessing settings: each argument of a call, or else the attribute of the same name."""
        return {key: getattr(self, key) if value is None else value for key, value in overrides.items()}

    @staticmethod
    def _value_settings(settings: dict) -> dict:
        """The arguments of [`rescale_and_normalize`]."""
        values = {key: settings[key] for key in ("do_rescale", "rescale_factor", "do_normalize")}
        values.update({key: np.array(settings[key], dtype=np.float32) for key in ("image_mean", "image_std")})
        return values

    @staticmethod
    def _image_list(images) -> list:
        if isinstance(images, (list, tuple)) or getattr(images, "ndim", None) == 4:
            images = list(images)
        else:
            images = [images]
        if not images:
            raise ValueError("Got no images to process.")
        return images

    @staticmethod
    def _target_size(height: int, width: int, settings: dict) -> tuple[int, int]:
        """The size an image of `height` x `width` is resized to ([`smart_resize`]), or checked to have already."""
        factor = settings["patch_size"] * settings["hidden_stride"]
        if settings["do_resize"]:
            budget = settings["size"]
            return smart_resize(height, width, factor, budget["shortest_edge"], budget["longest_edge"])
        if height % factor or width % factor:
            raise ValueError(
                f"With do_resize=False, image sides must be multiples of patch_size * hidden_stride = {factor}, "
                f"got {width}x{height}."
            )
        return height, width


class OvisU1ImageProcessorFast(OvisU1ImageProcessor):
    r"""
    Constructs an Ovis-U1 image processor that works with torch, on any device (`device="cuda"`), and needs no
    torchvision. It takes the settings of [`OvisU1ImageProcessor`] and gives the same patches, to the bit: its resize
    is Pillow's resampling written with torch ([`pillow_resize`]), for every filter but `NEAREST` (which it refuses),
    and the values go through the same float64-then-float32 rescale and normalization. Outputs are torch tensors
    (numpy with `return_tensors="np"`): `pixel_values` on the processing device, `image_grid_thw` on the CPU.

    On the CPU it is slower than Pillow; its use is preprocessing on the GPU. transformers' `AutoImageProcessor`
    returns it for `backend="torchvision"` (the name transformers gives its torch backend), or the older
    `use_fast=True`.
    """

    def preprocess(
        self,
        images,
        do_convert_rgb: bool | None = None,
        do_resize: bool | None = None,
        size: dict[str, int] | None = None,
        resample: PILImageResampling | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        patch_size: int | None = None,
        hidden_stride: int | None = None,
        temporal_patch_size: int | None = None,
        input_data_format: str | ChannelDimension | None = None,
        device: str | torch.device | None = None,
        return_tensors: str | TensorType | None = None,
    ) -> BatchFeature:
        """
        As [`OvisU1ImageProcessor.preprocess`], with torch.

        Args:
            device (`str` or `torch.device`, *optional*):
                Where to process; by default where a tensor image is, else the CPU.
            return_tensors (`str` or [`~utils.TensorType`], *optional*):
                `"np"` for numpy arrays; otherwise torch tensors.
        """
        settings = self._settings(
            do_convert_rgb=do_convert_rgb,
            do_resize=do_resize,
            size=pixel_budget(size or self.size, min_pixels, max_pixels),
            resample=resample,
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
            patch_size=patch_size,
            hidden_stride=hidden_stride,
            temporal_patch_size=temporal_patch_size,
        )
        resample = PILImageResampling(settings["resample"])
        if resample not in PILLOW_FILTERS:
            raise ValueError(
                f"OvisU1ImageProcessorFast resizes with Pillow's convolution filters "
                f"({', '.join(f.name for f in PILLOW_FILTERS)}), not {resample.name}: use OvisU1ImageProcessor for it."
            )
        # The rescaled and normalized value of each 8-bit level, computed as OvisU1ImageProcessor computes it.
        levels = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, 3))
        table = rescale_and_normalize(levels, **self._value_settings(settings))
        table = torch.from_numpy(np.ascontiguousarray(table.T))

        all_patches, image_grid_thw = [], []
        for image in self._image_list(images):
            pixels = self._to_tensor(in_default_layout(image, input_data_format), settings["do_convert_rgb"])
            if device is not None:
                pixels = pixels.to(device)
            if pixels.shape[0] != 3:
                raise ValueError(
                    f"Expected a 3-channel image, got {pixels.shape[0]} channel(s); use `do_convert_rgb=True` to "
                    "convert it."
                )
            height, width = self._target_size(*pixels.shape[-2:], settings)
            pixels = pillow_resize(pixels, height, width, resample)
            channels = torch.arange(3, device=pixels.device)[:, None, None]
            values = table.to(pixels.device)[channels, pixels.long()]
            patches, grid_thw = patchify(
                values, settings["patch_size"], settings["hidden_stride"], settings["temporal_patch_size"]
            )
            all_patches.append(patches)
            image_grid_thw.append(grid_thw)

        data = {
            "pixel_values": torch.cat(all_patches),
            "image_grid_thw": torch.tensor(image_grid_thw, dtype=torch.int64),
        }
        if return_tensors is not None and TensorType(return_tensors) == TensorType.NUMPY:
            data = {key: value.cpu().numpy() for key, value in data.items()}
        return BatchFeature(data=data)

    @staticmethod
    def _to_tensor(image, do_convert_rgb: bool) -> torch.Tensor:
        """uint8 pixels `(channels, height, width)`; converted to RGB as [`convert_to_rgb`] converts images."""
        if isinstance(image, (str, PIL.Image.Image)):
            image = to_pil_image(image)
            if do_convert_rgb:
                image = convert_to_rgb(image)
            pixels = torch.from_numpy(np.array(image))
            return pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
        if _check_uint8_image(image) == "array":
            image = torch.from_numpy(np.array(image))
            image = image.movedim(-1, 0) if image.ndim == 3 else image
        pixels = image[None] if image.ndim == 2 else image
        if do_convert_rgb and pixels.shape[0] == 1:
            pixels = pixels.expand(3, -1, -1)  # as Pillow converts L to RGB
        elif do_convert_rgb and pixels.shape[0] == 4:
            pixels = pixels[:3]  # as Pillow converts RGBA to RGB: the alpha is dropped
        return pixels


# The image processor of each transformers backend name: `AutoImageProcessor.from_pretrained(..., backend=...)`.
IMAGE_PROCESSOR_BACKENDS = {"pil": OvisU1ImageProcessor, "torchvision": OvisU1ImageProcessorFast}


def image_processor_class(backend: str | None = None, use_fast: bool | None = None) -> type:
    """
    The image processor class `AutoImageProcessor` gives for `backend` (or the older `use_fast`), by transformers'
    rule: `"torchvision"` (`use_fast=True`) gives [`OvisU1ImageProcessorFast`], `"pil"` (`use_fast=False`)
    [`OvisU1ImageProcessor`]; by default the first where torchvision is installed, else the second.
    """
    if backend is None and use_fast is not None:
        backend = "torchvision" if use_fast else "pil"
    if backend is None:
        backend = "torchvision" if is_torchvision_available() else "pil"
    if backend not in IMAGE_PROCESSOR_BACKENDS:
        known = ", ".join(f"{name!r} ({cls.__name__})" for name, cls in IMAGE_PROCESSOR_BACKENDS.items())
        raise ValueError(f"Unknown image processor backend {backend!r}: Ovis-U1 has {known}.")
    return IMAGE_PROCESSOR_BACKENDS[backend]


__all__ = [
    "IMAGE_PROCESSOR_BACKENDS",
    "OvisU1ImageProcessor",
    "OvisU1ImageProcessorFast",
    "OvisU1ImageProcessorKwargs",
    "convert_to_rgb",
    "fit_image",
    "image_processor_class",
    "pillow_resize",
    "smart_resize",
    "to_pil_image",
]

OvisU1ImageProcessor.register_for_auto_class("AutoImageProcessor")
OvisU1ImageProcessorFast.register_for_auto_class("AutoImageProcessor")

"""OvisU1ImageProcessorFast (torch, no torchvision) against OvisU1ImageProcessor and Pillow, and how the Auto classes,
the processor and a remote-code folder choose between the two by `backend`."""

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from tiny import tiny_image_processor, tiny_tokenizer
from transformers import AutoImageProcessor, AutoProcessor
from transformers.utils import is_torchvision_available

import ovis_u1_hf  # noqa: F401  (registers the Auto classes)
from ovis_u1_hf import OvisU1ImageProcessor, OvisU1ImageProcessorFast, OvisU1Processor
from ovis_u1_hf.modeling.image_processing_ovis_u1 import pillow_resize


Resampling = PIL.Image.Resampling
CONVOLUTION_FILTERS = [Resampling.BOX, Resampling.BILINEAR, Resampling.HAMMING, Resampling.BICUBIC, Resampling.LANCZOS]


def random_array(width, height, seed=0, channels=3):
    shape = (height, width) if channels is None else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def fast_like(slow: OvisU1ImageProcessor) -> OvisU1ImageProcessorFast:
    return OvisU1ImageProcessorFast(**{k: v for k, v in slow.to_dict().items() if k != "image_processor_type"})


def assert_same_outputs(slow, fast, images, **kwargs):
    want = slow(images, return_tensors="pt", **kwargs)
    got = fast(images, **kwargs)
    assert got["pixel_values"].dtype == torch.float32 and got["image_grid_thw"].dtype == torch.int64
    assert torch.equal(got["image_grid_thw"], want["image_grid_thw"])
    assert torch.equal(got["pixel_values"], want["pixel_values"])


@pytest.mark.parametrize("resample", CONVOLUTION_FILTERS, ids=lambda f: f.name)
def test_pillow_resize_gives_pillow_s_bytes(resample):
    rng = np.random.default_rng(int(resample))
    sizes = [((1, 1), (5, 3)), ((7, 300), (7, 2)), ((300, 200), (300, 77)), ((64, 64), (64, 64))]
    sizes += [(tuple(rng.integers(1, 160, 2)), tuple(rng.integers(1, 240, 2))) for _ in range(40)]
    for number, ((width, height), (new_width, new_height)) in enumerate(sizes):
        array = random_array(width, height, seed=number)
        expected = np.array(PIL.Image.fromarray(array).resize((new_width, new_height), resample))
        got = pillow_resize(torch.from_numpy(array).permute(2, 0, 1), new_height, new_width, resample)
        assert torch.equal(got.permute(1, 2, 0), torch.from_numpy(expected)), (width, height, new_width, new_height)


def test_pillow_resize_refuses_nearest_and_non_uint8_pixels():
    pixels = torch.zeros(3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="convolution filters.*not NEAREST"):
        pillow_resize(pixels, 4, 4, Resampling.NEAREST)
    with pytest.raises(ValueError, match="uint8"):
        pillow_resize(pixels.float(), 4, 4)


def test_fast_gives_the_same_patches_as_the_pil_processor():
    slow = tiny_image_processor()
    fast = fast_like(slow)
    for number, (width, height) in enumerate([(84, 56), (80, 50), (300, 20), (3, 3), (1000, 700), (57, 201)]):
        assert_same_outputs(slow, fast, PIL.Image.fromarray(random_array(width, height, seed=number)))
    # The released pixel budget: downscaled and upscaled images.
    default = OvisU1ImageProcessor()
    for width, height in [(1000, 700), (200, 100)]:
        assert_same_outputs(default, fast_like(default), PIL.Image.fromarray(random_array(width, height)))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16", "1"])
def test_fast_converts_pil_modes_as_the_pil_processor(mode):
    image = PIL.Image.fromarray(random_array(70, 50))
    if mode == "I;16":
        image = PIL.Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    elif mode == "P":
        image = image.quantize(16)
    else:
        image = image.convert(mode)
    slow = tiny_image_processor()
    assert_same_outputs(slow, fast_like(slow), image)


def test_fast_takes_arrays_tensors_batches_and_exif_as_the_pil_processor():
    slow = tiny_image_processor()
    fast = fast_like(slow)
    rgb, gray, rgba = random_array(70, 50), random_array(70, 50, channels=None), random_array(70, 50, channels=4)
    for image in (rgb, gray, gray[..., None], rgba, rgb[::-1], torch.from_numpy(rgb).permute(2, 0, 1)):
        assert_same_outputs(slow, fast, image)
    assert_same_outputs(slow, fast, torch.from_numpy(rgba).permute(2, 0, 1))
    assert_same_outputs(slow, fast, torch.from_numpy(gray))
    assert_same_outputs(slow, fast, np.stack([rgb, rgb[::-1]]))
    assert_same_outputs(slow, fast, [PIL.Image.fromarray(rgb), random_array(30, 90)])
    assert_same_outputs(slow, fast, rgb.transpose(2, 0, 1), input_data_format="channels_first")
    assert_same_outputs(slow, fast, torch.from_numpy(rgb), input_data_format="channels_last")
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # displayed after a 90-degree turn
    buffer = io.BytesIO()
    PIL.Image.fromarray(rgb).save(buffer, format="PNG", exif=exif.tobytes())
    assert_same_outputs(slow, fast, PIL.Image.open(io.BytesIO(buffer.getvalue())))


@pytest.mark.parametrize(
    "settings",
    [
        {"do_resize": False},
        {"do_rescale": False, "do_normalize": False},
        {"do_normalize": False},
        {"rescale_factor": 1 / 127.5, "image_mean": [0.5, 0.25, 0.0], "image_std": [0.5, 2.0, 0.3]},
        {"temporal_patch_size": 2},
        {"min_pixels": 28 * 28 * 9, "max_pixels": 28 * 28 * 9},
        {"size": {"shortest_edge": 28 * 28, "longest_edge": 28 * 28 * 30}},
        {"resample": Resampling.BILINEAR},
        {"resample": Resampling.LANCZOS},
        {"patch_size": 7, "hidden_stride": 4},
    ],
    ids=lambda settings: ",".join(settings),
)
def test_fast_follows_every_setting_as_the_pil_processor(settings):
    slow = tiny_image_processor()
    fast = fast_like(slow)
    image = PIL.Image.fromarray(random_array(84, 56))
    assert_same_outputs(slow, fast, image, **settings)  # as call arguments
    assert_same_outputs(tiny_image_processor(**settings), fast_like(tiny_image_processor(**settings)), image)


@pytest.mark.parametrize(
    "image, kwargs, error, match",
    [
        (np.zeros((56, 56, 3), np.float32), {}, ValueError, "uint8 image array.*float32"),
        (torch.zeros(3, 56, 56), {}, ValueError, "uint8 image tensor.*float32"),
        (torch.zeros(56, 56, 3, dtype=torch.uint8), {}, ValueError, r"\(channels, height, width\).*permute"),
        (np.zeros((0, 5, 3), np.uint8), {}, ValueError, "empty image"),
        (42, {}, TypeError, "Unsupported image type int"),
        ([], {}, ValueError, "no images"),
        (np.zeros((57, 84, 3), np.uint8), {"do_resize": False}, ValueError, "multiples of .* = 28, got 84x57"),
        (np.zeros((56, 56), np.uint8), {"do_convert_rgb": False}, ValueError, "3-channel image, got 1 channel"),
        (np.zeros((56, 56, 3), np.uint8), {"resample": Resampling.NEAREST}, ValueError, "use OvisU1ImageProcessor"),
    ],
)
def test_fast_refuses_bad_inputs_clearly(image, kwargs, error, match):
    with pytest.raises(error, match=match):
        fast_like(tiny_image_processor())(image, **kwargs)


def test_fast_returns_torch_tensors_or_numpy_arrays():
    fast = fast_like(tiny_image_processor())
    image = random_array(84, 56)
    for return_tensors in (None, "pt"):
        out = fast(image, return_tensors=return_tensors)
        assert isinstance(out["pixel_values"], torch.Tensor) and isinstance(out["image_grid_thw"], torch.Tensor)
    out = fast(image, return_tensors="np")
    assert isinstance(out["pixel_values"], np.ndarray) and out["pixel_values"].dtype == np.float32
    np.testing.assert_array_equal(out["pixel_values"], tiny_image_processor()(image)["pixel_values"])
    assert fast(image, device="cpu")["pixel_values"].device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_fast_on_the_gpu_gives_the_cpu_s_patches():
    fast = fast_like(tiny_image_processor())
    image = random_array(300, 200)
    on_gpu = fast(image, device="cuda")
    assert on_gpu["pixel_values"].device.type == "cuda"
    assert torch.equal(on_gpu["pixel_values"].cpu(), fast(image)["pixel_values"])
    from_gpu_tensor = fast(torch.from_numpy(image).permute(2, 0, 1).cuda())["pixel_values"]
    assert from_gpu_tensor.device.type == "cuda" and torch.equal(from_gpu_tensor, on_gpu["pixel_values"])


def save_processor(folder):
    processor = OvisU1Processor(tiny_image_processor(), tiny_tokenizer())
    processor.save_pretrained(folder)
    return processor


def test_auto_image_processor_backend_chooses_the_class(tmp_path):
    tiny_image_processor().save_pretrained(tmp_path / "image_processor")
    save_processor(tmp_path / "processor")
    for folder in (tmp_path / "image_processor", tmp_path / "processor"):
        assert type(AutoImageProcessor.from_pretrained(folder, backend="torchvision")) is OvisU1ImageProcessorFast
        assert type(AutoImageProcessor.from_pretrained(folder, backend="pil")) is OvisU1ImageProcessor
        # Unasked, transformers' rule: the torch processor where torchvision is installed, else the PIL one.
        default = OvisU1ImageProcessorFast if is_torchvision_available() else OvisU1ImageProcessor
        assert type(AutoImageProcessor.from_pretrained(folder)) is default
    # A saved folder names both backends' classes, for `backend=` where its code is loaded.
    saved = json.loads((tmp_path / "image_processor" / "preprocessor_config.json").read_text())
    assert saved["auto_map"]["AutoImageProcessor"] == {
        "pil": "image_processing_ovis_u1.OvisU1ImageProcessor",
        "torchvision": "image_processing_ovis_u1.OvisU1ImageProcessorFast",
    }
    fast = AutoImageProcessor.from_pretrained(tmp_path / "image_processor", backend="torchvision")
    fast.save_pretrained(tmp_path / "fast")
    saved_fast = json.loads((tmp_path / "fast" / "preprocessor_config.json").read_text())
    assert saved_fast["auto_map"] == saved["auto_map"]
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "fast", backend="pil")) is OvisU1ImageProcessor


def test_processor_backend_chooses_its_image_processor_and_the_outputs_agree(tmp_path):
    save_processor(tmp_path)
    slow = OvisU1Processor.from_pretrained(tmp_path, backend="pil")
    for loaded in (
        OvisU1Processor.from_pretrained(tmp_path, backend="torchvision"),
        OvisU1Processor.from_pretrained(tmp_path, use_fast=True),
        AutoProcessor.from_pretrained(tmp_path, backend="torchvision"),
    ):
        assert type(loaded.image_processor) is OvisU1ImageProcessorFast
        assert loaded.image_processor.to_dict() | {"image_processor_type": None} == slow.image_processor.to_dict() | {
            "image_processor_type": None
        }
    assert type(slow.image_processor) is OvisU1ImageProcessor
    assert type(OvisU1Processor.from_pretrained(tmp_path, use_fast=False).image_processor) is OvisU1ImageProcessor
    texts = ["<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n", "<image>\n<image>\nAnd these?"]
    images = [[PIL.Image.fromarray(random_array(90, 60))], [random_array(40, 100), random_array(56, 56, seed=1)]]
    want = slow(images=images, text=texts, return_tensors="pt")
    got = loaded(images=images, text=texts, return_tensors="pt")
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    with pytest.raises(ValueError, match="Unknown image processor backend 'cv2'"):
        OvisU1Processor.from_pretrained(tmp_path, backend="cv2")


def test_remote_code_folder_offers_both_backends(tmp_path):
    processor = save_processor(tmp_path / "processor")
    tiny_image_processor().save_pretrained(tmp_path / "image_processor")
    image = random_array(90, 60)
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "expected.npy", processor.image_processor(image)["pixel_values"])
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["ovis_u1_hf"] = None  # the package cannot be imported in this process
        import numpy as np
        from transformers import AutoImageProcessor, AutoProcessor
        image, expected = np.load({str(tmp_path / "image.npy")!r}), np.load({str(tmp_path / "expected.npy")!r})
        for folder in ({str(tmp_path / "processor")!r}, {str(tmp_path / "image_processor")!r}):
            chosen = {{}}
            for name, kwargs in (("torchvision", dict(backend="torchvision")), ("pil", dict(backend="pil")),
                                 ("use_fast", dict(use_fast=True)), ("use_fast=False", dict(use_fast=False))):
                loaded = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True, **kwargs)
                assert type(loaded).__module__.startswith("transformers_modules"), type(loaded).__module__
                chosen[name] = type(loaded).__name__
                np.testing.assert_array_equal(np.asarray(loaded(image)["pixel_values"]), expected)
            assert chosen == {{"torchvision": "OvisU1ImageProcessorFast", "pil": "OvisU1ImageProcessor",
                              "use_fast": "OvisU1ImageProcessorFast", "use_fast=False": "OvisU1ImageProcessor"}}, chosen
        processor = AutoProcessor.from_pretrained(
            {str(tmp_path / "processor")!r}, trust_remote_code=True, backend="torchvision"
        )
        assert type(processor.image_processor).__name__ == "OvisU1ImageProcessorFast"
        print("remote ok")
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": ""}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote ok" in result.stdout

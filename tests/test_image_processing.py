"""OvisU1ImageProcessor, smart_resize and fit_image against plain computations from SPEC sections 4 and 11."""

import io
import json

import numpy as np
import PIL.Image
import pytest
import torch
from tiny import tiny_image_processor

from ovis_u1_hf.modeling.image_processing_ovis_u1 import OvisU1ImageProcessor, fit_image, smart_resize


MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
DEFAULT_LIMITS = dict(min_pixels=448 * 448, max_pixels=1792 * 1792)
TINY_LIMITS = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)


def random_image(width, height, seed=0, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return PIL.Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)


def normalized(image: PIL.Image.Image) -> np.ndarray:
    """(3, H, W) float64: rescaled by 1/255 and normalized with the CLIP mean and std."""
    return ((np.asarray(image, dtype=np.float64) / 255 - MEAN) / STD).transpose(2, 0, 1)


def reference_rows(pixels: np.ndarray, patch=14, stride=2) -> np.ndarray:
    """SPEC 4 patch order, one patch at a time: 2x2 groups in raster order, the 4 patches of a group row by row."""
    _, height, width = pixels.shape
    rows = []
    for group_row in range(height // patch // stride):
        for group_col in range(width // patch // stride):
            for dy in range(stride):
                for dx in range(stride):
                    top, left = (group_row * stride + dy) * patch, (group_col * stride + dx) * patch
                    rows.append(pixels[:, top : top + patch, left : left + patch].reshape(-1))
    return np.stack(rows)


@pytest.mark.parametrize(
    "height, width, limits, expected",
    [
        (448, 448, DEFAULT_LIMITS, (448, 448)),
        (1080, 1920, DEFAULT_LIMITS, (1092, 1932)),  # rounded to multiples of 28: 38.57 -> 39, 68.57 -> 69
        (4000, 3000, DEFAULT_LIMITS, (2044, 1540)),  # over max: beta = sqrt(12e6 / 1792^2), sides floored
        (100, 200, DEFAULT_LIMITS, (336, 644)),  # under min: beta = sqrt(448^2 / 2e4), sides ceiled
        (1, 1, DEFAULT_LIMITS, (448, 448)),  # short side scaled up to 28, then under min
        (10, 10000, DEFAULT_LIMITS, (28, 28000)),  # scaled up to 28 x 28000; no aspect clamp after scaling up
        (10000, 10, DEFAULT_LIMITS, (28000, 28)),
        (30, 9000, DEFAULT_LIMITS, (56, 6356)),  # aspect 300 clamped to 30 x 6000, then under min
        (1, 100000, DEFAULT_LIMITS, (28, 114688)),  # a zero side would remain: 28 x (1792^2 // 28^2 * 28)
        (70, 126, TINY_LIMITS, (56, 112)),  # Python rounds halves to even: 2.5 -> 2, 4.5 -> 4
        (10000, 10, TINY_LIMITS, (448, 28)),  # zero-side guard within a small budget
        (1, 1, TINY_LIMITS, (56, 56)),
        (56, 84, TINY_LIMITS, (56, 84)),
    ],
)
def test_smart_resize_table(height, width, limits, expected):
    assert smart_resize(height, width, 28, **limits) == expected


def test_smart_resize_bounds():
    rng = np.random.default_rng(0)
    for height, width in rng.integers(28, 5000, (200, 2)).tolist():
        if max(height, width) / min(height, width) > 200:
            continue
        h, w = smart_resize(height, width, 28, **DEFAULT_LIMITS)
        assert h % 28 == 0 and w % 28 == 0
        assert 448 * 448 <= h * w <= 1792 * 1792
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 10)


def test_patch_order_matches_per_patch_loop():
    image = random_image(84, 56)  # already a valid size: no resize
    out = tiny_image_processor()(image, return_tensors="pt")
    assert out["pixel_values"].dtype == torch.float32 and out["image_grid_thw"].dtype == torch.int64
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]
    np.testing.assert_allclose(out["pixel_values"].numpy(), reference_rows(normalized(image)), atol=1e-5)


def test_temporal_patch_size_repeats_the_image():
    image = random_image(56, 56)
    rows = tiny_image_processor(temporal_patch_size=2)(image)["pixel_values"]
    assert rows.shape == (16, 3 * 2 * 14 * 14)
    expected = reference_rows(normalized(image)).reshape(16, 3, 1, 14, 14).repeat(2, axis=2)
    np.testing.assert_allclose(rows, expected.reshape(16, -1), atol=1e-5)


def test_resize_is_pillow_bicubic_to_smart_resize():
    image = random_image(80, 50)
    height, width = smart_resize(50, 80, 28, **TINY_LIMITS)
    assert (height, width) == (56, 84)
    out = tiny_image_processor()(image)
    expected = reference_rows(normalized(image.resize((width, height), PIL.Image.Resampling.BICUBIC)))
    np.testing.assert_allclose(out["pixel_values"], expected, atol=1e-5)
    assert out["image_grid_thw"].tolist() == [[1, height // 14, width // 14]]


def test_normalization_values():
    out = tiny_image_processor()(PIL.Image.new("RGB", (56, 56), (255, 0, 128)))
    expected = (np.array([255, 0, 128]) / 255 - MEAN) / STD
    channels = out["pixel_values"].reshape(-1, 3, 14 * 14)
    np.testing.assert_allclose(channels, np.broadcast_to(expected[None, :, None], channels.shape), atol=1e-6)
    np.testing.assert_allclose(expected, [1.9303361, -1.7520971, 0.3399486], atol=1e-6)


def test_exif_orientation_is_applied():
    image = random_image(84, 56)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # stored rotated: displayed after a 90-degree clockwise turn
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif.tobytes())
    stored = PIL.Image.open(io.BytesIO(buffer.getvalue()))
    processor = tiny_image_processor()
    out = processor(stored)
    upright = image.transpose(PIL.Image.Transpose.ROTATE_270)
    assert out["image_grid_thw"].tolist() == [[1, 6, 4]]
    np.testing.assert_allclose(out["pixel_values"], reference_rows(normalized(upright)), atol=1e-5)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16", "1"])
def test_modes_become_rgb(mode):
    processor = tiny_image_processor()
    rgb = random_image(56, 56)
    if mode == "RGBA":  # transparency is dropped, as the released `convert("RGB")` does: colours stay
        image = rgb.copy()
        image.putalpha(0)
    elif mode == "P":
        image = rgb.quantize(16)
        rgb = PIL.Image.fromarray(np.asarray(image.getpalette(), np.uint8).reshape(-1, 3)[np.asarray(image)])
    elif mode == "I;16":  # the 16-bit range maps to 8 bits (Pillow alone would clip at 255)
        gray = np.asarray(random_image(56, 56, mode="L"))
        image = PIL.Image.fromarray(gray.astype(np.uint16) * 257)
        assert image.mode == "I;16"
        rgb = PIL.Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))
    elif mode in ("L", "LA", "1"):
        image = rgb.convert(mode)
        gray = np.asarray(image.convert("L"))
        rgb = PIL.Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))
    else:
        image = rgb.convert(mode)
        rgb = image.convert("RGB")
    np.testing.assert_allclose(processor(image)["pixel_values"], processor(rgb)["pixel_values"], atol=1e-6)


def test_numpy_and_torch_inputs():
    processor = tiny_image_processor()
    image = random_image(84, 56)
    expected = processor(image)["pixel_values"]
    array = np.asarray(image)
    np.testing.assert_array_equal(processor(array)["pixel_values"], expected)
    np.testing.assert_array_equal(processor(torch.tensor(array).permute(2, 0, 1))["pixel_values"], expected)
    gray = np.asarray(image.convert("L"))
    np.testing.assert_array_equal(processor(gray)["pixel_values"], processor(gray[..., None])["pixel_values"])
    batch = processor(np.stack([array, array[::-1]]))
    assert batch["image_grid_thw"].tolist() == [[1, 4, 6]] * 2
    np.testing.assert_array_equal(batch["pixel_values"][:24], expected)


@pytest.mark.parametrize(
    "image, error, match",
    [
        (np.zeros((56, 56, 3), np.float32), ValueError, "uint8 image array.*float32"),
        (torch.zeros(3, 56, 56), ValueError, "uint8 image tensor.*float32"),
        (torch.zeros(3, 56, 56, dtype=torch.bfloat16), ValueError, "uint8 image tensor.*bfloat16"),
        (np.zeros((56, 56, 5), np.uint8), ValueError, r"\(height, width, channels\).*\(56, 56, 5\)"),
        (torch.zeros(56, 56, 3, dtype=torch.uint8), ValueError, r"\(channels, height, width\).*permute"),
        (np.zeros((1, 1, 56, 56, 3), np.uint8), ValueError, "2 or 3 dimensions"),
        (np.zeros((0, 5, 3), np.uint8), ValueError, "empty image"),
        (42, TypeError, "Unsupported image type int"),
        ([], ValueError, "no images"),
    ],
)
def test_bad_inputs(image, error, match):
    with pytest.raises(error, match=match):
        tiny_image_processor()(image)


@pytest.mark.parametrize("size", [(1, 1), (10, 10000), (10000, 10), (3, 3)])
def test_tiny_and_extreme_images(size):
    width, height = size
    processor = OvisU1ImageProcessor()
    for proc, limits in ((processor, DEFAULT_LIMITS), (tiny_image_processor(), TINY_LIMITS)):
        out = proc(PIL.Image.new("RGB", (width, height), (10, 20, 30)))
        resized_height, resized_width = smart_resize(height, width, 28, **limits)
        assert out["image_grid_thw"].tolist() == [[1, resized_height // 14, resized_width // 14]]
        assert out["pixel_values"].shape == (resized_height * resized_width // 196, 588)
        assert np.isfinite(out["pixel_values"]).all()


def test_defaults_and_save_load_round_trip(tmp_path):
    processor = OvisU1ImageProcessor()
    assert processor.model_input_names == ["pixel_values", "image_grid_thw"]
    assert (processor.min_pixels, processor.max_pixels) == (448 * 448, 1792 * 1792)
    assert (processor.patch_size, processor.hidden_stride, processor.temporal_patch_size) == (14, 2, 1)
    assert processor.resample == PIL.Image.Resampling.BICUBIC and processor.rescale_factor == 1 / 255
    assert processor.image_mean == MEAN.tolist() and processor.image_std == STD.tolist()

    small = tiny_image_processor()
    small.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "OvisU1ImageProcessor" and "max_pixels" not in saved
    assert saved["size"] == {"shortest_edge": small.min_pixels, "longest_edge": 28 * 28 * 16}
    loaded = OvisU1ImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == small.to_dict()
    image = random_image(70, 50)
    np.testing.assert_array_equal(loaded(image)["pixel_values"], small(image)["pixel_values"])
    assert OvisU1ImageProcessor.from_pretrained(tmp_path, max_pixels=28 * 28 * 4).max_pixels == 28 * 28 * 4


def test_loads_released_preprocessor_config(tmp_path):
    released = {  # a CLIP image processor plus the native-resolution fields (SPEC 2)
        "crop_size": 448,
        "do_center_crop": False,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": MEAN.tolist(),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": STD.tolist(),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 448},
        "min_pixels": 200704,
        "max_pixels": 3211264,
        "patch_size": 14,
        "hidden_stride": 2,
        "temporal_patch_size": 1,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(released))
    processor = OvisU1ImageProcessor.from_pretrained(tmp_path)
    out = processor(random_image(100, 200))
    assert out["image_grid_thw"].tolist() == [[1, 644 // 14, 336 // 14]]


def column_image(width, height):
    """Each pixel holds its column index, so a crop shows where it started."""
    return PIL.Image.fromarray(np.tile(np.arange(width, dtype=np.uint8), (height, 1)), mode="L")


@pytest.mark.parametrize("width, left", [(65, 0), (67, 2), (69, 2)])  # round(0.5) = 0, round(1.5) = 2, round(2.5) = 2
def test_fit_image_center_crop_uses_python_round(width, left):
    fitted = fit_image(column_image(width, 64), 64, 64)  # r = 1: no resize
    assert fitted.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(fitted)[0], np.arange(left, left + 64))


def test_fit_image_scales_to_cover_then_crops():
    image = random_image(100, 50)
    fitted = fit_image(image, 64, 48)
    # r = max(64 / 100, 48 / 50) = 0.96 -> 96 x 48, left = round(32 / 2) = 16
    expected = image.resize((96, 48), PIL.Image.Resampling.BICUBIC).crop((16, 0, 80, 48))
    np.testing.assert_array_equal(np.asarray(fitted), np.asarray(expected))


def test_fit_image_pads_black_when_truncation_falls_short():
    image = random_image(7, 7)
    fitted = fit_image(image, 61, 30)
    # r = 61 / 7 but int(r * 7) == 60: the scaled image is 60 x 60, one column short
    resized = image.resize((60, 60), PIL.Image.Resampling.BICUBIC)
    assert fitted.size == (61, 30)
    np.testing.assert_array_equal(np.asarray(fitted)[:, :60], np.asarray(resized)[15:45])
    assert not np.asarray(fitted)[:, 60].any()


def test_fit_image_applies_exif_orientation():
    image = random_image(40, 20)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif.tobytes())
    fitted = fit_image(PIL.Image.open(io.BytesIO(buffer.getvalue())), 20, 40)
    upright = image.transpose(PIL.Image.Transpose.ROTATE_270)
    np.testing.assert_array_equal(np.asarray(fitted), np.asarray(upright))


# ------------------------------------------------------- conventions of native-resolution image processors --------


def test_size_holds_the_pixel_budget_and_the_released_names_set_it():
    assert OvisU1ImageProcessor().size == {"shortest_edge": 448 * 448, "longest_edge": 1792 * 1792}
    by_size = OvisU1ImageProcessor(size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 16})
    by_names = OvisU1ImageProcessor(**TINY_LIMITS)
    assert by_size.size == by_names.size and (by_size.min_pixels, by_size.max_pixels) == (28 * 28 * 4, 28 * 28 * 16)
    image = random_image(300, 200)
    expected = by_names(image)["image_grid_thw"].tolist()
    assert by_size(image)["image_grid_thw"].tolist() == expected == [[1, 6, 8]]  # 84 x 112 px: at most 16 * 28 * 28
    # Per call, `size` or the released names.
    default = OvisU1ImageProcessor()
    assert default(image, size=by_size.size)["image_grid_thw"].tolist() == expected
    assert default(image, **TINY_LIMITS)["image_grid_thw"].tolist() == expected
    with pytest.raises(ValueError, match="shortest_edge.*longest_edge"):
        OvisU1ImageProcessor(size={"height": 448, "width": 448})


def test_do_resize_false_keeps_a_fitting_size_and_refuses_others():
    processor = tiny_image_processor()
    image = random_image(56, 84)  # already multiples of 28
    kept = processor(image, do_resize=False)
    assert kept["image_grid_thw"].tolist() == [[1, 6, 4]]
    np.testing.assert_allclose(kept["pixel_values"], reference_rows(normalized(image)), atol=1e-5)
    with pytest.raises(ValueError, match="multiples of patch_size \\* hidden_stride = 28, got 57x84"):
        processor(random_image(57, 84), do_resize=False)


def test_rescale_and_normalize_switches():
    processor = tiny_image_processor()
    image = random_image(56, 56)
    raw = processor(image, do_rescale=False, do_normalize=False)["pixel_values"]
    np.testing.assert_array_equal(raw, reference_rows(np.asarray(image, dtype=np.float64).transpose(2, 0, 1)))
    rescaled = processor(image, do_normalize=False)["pixel_values"]
    np.testing.assert_allclose(rescaled, raw / 255, atol=1e-7)


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_input_data_format_for_arrays_and_tensors(layout):
    processor = tiny_image_processor()
    image = random_image(70, 50)
    expected = processor(image)["pixel_values"]
    hwc = np.asarray(image)
    array = hwc.transpose(2, 0, 1) if layout == "channels_first" else hwc
    tensor = torch.from_numpy(np.array(array))
    for given in (array, tensor):
        np.testing.assert_array_equal(processor(given, input_data_format=layout)["pixel_values"], expected)

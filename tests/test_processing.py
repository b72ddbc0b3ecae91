"""OvisU1Processor: chunked tokenization, image tokens, padding, truncation, chat template (SPEC 6, 7, 10)."""

import numpy as np
import PIL.Image
import pytest
import torch
from tiny import tiny_image_processor, tiny_tokenizer
from transformers import AutoImageProcessor
from transformers.testing_utils import CaptureLogger

from ovis_u1_hf.modeling import processing_ovis_u1
from ovis_u1_hf.modeling.configuration_ovis_u1 import OvisU1Config
from ovis_u1_hf.modeling.image_processing_ovis_u1 import OvisU1ImageProcessor
from ovis_u1_hf.modeling.processing_ovis_u1 import OvisU1Processor


T2I_PREFIX = (
    "Describe the image by detailing the color, shape, size, texture, quantity, text, and spatial relationships of "
    "the objects:"
)
EMPTY_THINK = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def processor(tokenizer):
    return OvisU1Processor(tiny_image_processor(), tokenizer)


def image(width, height, seed=0):
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def image_span(processor, num_tokens):
    return [processor.image_start_token_id] + [processor.image_token_id] * num_tokens + [processor.image_end_token_id]


def test_token_ids(processor, tokenizer):
    assert processor.image_token == "<image>"
    assert processor.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert processor.image_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert processor.image_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert processor.multimodal_max_length == 2048
    assert sorted(processor.model_input_names) == ["attention_mask", "image_grid_thw", "input_ids", "pixel_values"]


def test_single_image_expansion(processor, tokenizer):
    picture = image(84, 56)  # grid (1, 4, 6): 24 patches, 6 visual tokens
    out = processor(images=picture, text="<image>\nDescribe the image.", return_tensors="pt")
    expected = encode(tokenizer, "") + image_span(processor, 6) + encode(tokenizer, "\nDescribe the image.")
    assert out["input_ids"].dtype == torch.int64 and out["attention_mask"].dtype == torch.int64
    assert out["input_ids"].tolist() == [expected]
    assert out["attention_mask"].tolist() == [[1] * len(expected)]
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]
    expected_pixels = processor.image_processor(picture, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(out["pixel_values"], expected_pixels)


def test_chunks_are_tokenized_alone(processor, tokenizer):
    text = "Image 1: <image>\nWhat is in the picture?"
    ids = processor(images=image(56, 56), text=text, return_tensors="pt")["input_ids"][0].tolist()
    before, after = encode(tokenizer, "Image 1: "), encode(tokenizer, "\nWhat is in the picture?")
    assert ids == before + image_span(processor, 4) + after
    # Alone, the chunks end with a bare space and start with a bare newline ...
    assert tokenizer.convert_ids_to_tokens(before)[-1] == "Ġ" and tokenizer.convert_ids_to_tokens(after)[0] == "Ċ"
    # ... while the whole string merges them with the marker's characters: tokens that cross the borders.
    whole = tokenizer.convert_ids_to_tokens(encode(tokenizer, text))
    assert "Ġ<" in whole and ">Ċ" in whole


def test_several_images_flat_or_nested(processor, tokenizer):
    a, b, c = image(56, 56, 1), image(84, 56, 2), image(56, 112, 3)  # 4, 6 and 8 visual tokens
    texts = ["<image>\nfirst", "Image 1: <image>\nImage 2: <image>\nsecond"]
    flat = processor(images=[a, b, c], text=texts, return_tensors="pt")
    nested = processor(images=[[a], [b, c]], text=texts, return_tensors="pt")
    for key in flat:
        torch.testing.assert_close(flat[key], nested[key])
    assert flat["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 6], [1, 8, 4]]
    expected_pixels = np.concatenate([processor.image_processor(x)["pixel_values"] for x in (a, b, c)])
    np.testing.assert_array_equal(flat["pixel_values"].numpy(), expected_pixels)
    second = (
        encode(tokenizer, "Image 1: ")
        + image_span(processor, 6)
        + encode(tokenizer, "\nImage 2: ")
        + image_span(processor, 8)
        + encode(tokenizer, "\nsecond")
    )
    assert flat["input_ids"][1].tolist() == second
    assert (flat["input_ids"] == processor.image_token_id).sum(-1).tolist() == [4, 14]


def test_left_padding(processor, tokenizer):
    picture = image(56, 56)
    out = processor(images=[picture], text=["short", "<image>\nA longer text with an image."], return_tensors="pt")
    alone = processor(text="short", return_tensors="pt")["input_ids"][0].tolist()
    full = processor(images=picture, text="<image>\nA longer text with an image.", return_tensors="pt")["input_ids"][0].tolist()
    pad = len(full) - len(alone)
    assert out["input_ids"].tolist() == [[tokenizer.pad_token_id] * pad + alone, full]
    assert out["attention_mask"].tolist() == [[0] * pad + [1] * len(alone), [1] * len(full)]
    assert tokenizer.pad_token == "<|endoftext|>"


def test_text_only(processor, tokenizer):
    out = processor(text=["<|im_start|>user\nHello<|im_end|>\n", "Hi"], return_tensors="pt")
    assert set(out) == {"input_ids", "attention_mask"}
    assert out["input_ids"][0].tolist() == encode(tokenizer, "<|im_start|>user\nHello<|im_end|>\n")
    assert processor(text="Hi", return_tensors=None)["input_ids"] == [encode(tokenizer, "Hi")]


def truncation_case(processor, tokenizer, max_length):
    """An image (4 visual tokens) between two texts; returns the output, the full sequence and the logs."""
    text = "A first text.<image>\nthe question?"
    full = processor(images=image(56, 56), text=text, return_tensors="pt")["input_ids"][0].tolist()
    logger = processing_ovis_u1.logger
    with CaptureLogger(logger) as logs:
        out = processor(images=image(56, 56), text=text, truncation=True, max_length=max_length, return_tensors="pt")
    return out, full, logs.out


def test_truncation_keeps_last_tokens_and_drops_images_left_out(processor, tokenizer):
    after = len(encode(tokenizer, "\nthe question?"))
    # Everything of the image but its end indicator is cut: no visual token left, the image is dropped.
    out, full, logs = truncation_case(processor, tokenizer, after + 1)
    assert out["input_ids"][0].tolist() == full[-(after + 1) :]
    assert out["input_ids"][0, 0] == processor.image_end_token_id
    assert "pixel_values" not in out and "image_grid_thw" not in out
    assert "keeping its last" in logs and "1 image(s) dropped" in logs


@pytest.mark.parametrize("visual_tokens_kept", [1, 3, 4])
def test_truncation_keeps_an_image_cut_in_part_whole(processor, tokenizer, visual_tokens_kept):
    after = len(encode(tokenizer, "\nthe question?"))
    out, full, logs = truncation_case(processor, tokenizer, after + 1 + visual_tokens_kept)
    assert out["input_ids"][0].tolist() == full[-(after + 1 + visual_tokens_kept) :]
    assert (out["input_ids"] == processor.image_token_id).sum() == visual_tokens_kept
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]] and out["pixel_values"].shape == (16, 588)
    assert "0 image(s) dropped" in logs


def test_truncation_default_attribute_and_batch(processor, tokenizer):
    texts = ["<image>\n" + "the question? " * 20, "<image>\nshort"]
    processor.multimodal_max_length = 30
    with CaptureLogger(processing_ovis_u1.logger) as logs:
        out = processor(images=[image(56, 56, 1), image(84, 56, 2)], text=texts, return_tensors="pt")
    assert out["input_ids"].shape[1] == 30 and "Sequence 0" in logs.out and "Sequence 1" not in logs.out
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]  # the first sample's image was cut out
    with CaptureLogger(processing_ovis_u1.logger) as logs:
        out = processor(images=[image(56, 56, 1), image(84, 56, 2)], text=texts, truncation=True, max_length=1000, return_tensors="pt")
    assert logs.out == "" and out["image_grid_thw"].shape == (2, 3)


@pytest.mark.parametrize(
    "images, text, match",
    [
        (["one"], "<image><image>", r"2 `<image>` marker\(s\).*1 image\(s\)"),
        (None, "<image>", r"1 `<image>` marker\(s\).*0 image\(s\)"),
        (["one", "two"], "no marker", r"0 `<image>` marker\(s\).*2 image\(s\)"),
        ([["one"], []], ["<image>", "<image>"], r"\[1, 1\] `<image>` markers but \[1, 0\] images"),
        (["one"], ["<image>", "<image>"], r"per text: \[1, 1\]"),
    ],
)
def test_marker_count_mismatch_raises_before_image_work(processor, images, text, match):
    # The "images" are strings that are not images: any image work would fail differently.
    with pytest.raises(ValueError, match=match):
        processor(images=images, text=text, return_tensors="pt")


def test_bad_text_and_modalities(processor):
    with pytest.raises(ValueError, match="`text` is required"):
        processor(images=image(56, 56), return_tensors="pt")
    with pytest.raises(ValueError, match="list of strings"):
        processor(text=[1, 2], return_tensors="pt")
    with pytest.raises(ValueError, match="non-empty list"):
        processor(text=[], return_tensors="pt")
    with pytest.raises(ValueError, match="images and text only"):
        processor(text="hi", videos=[np.zeros((2, 56, 56, 3), np.uint8)], return_tensors="pt")


def test_image_processor_overrides(processor):
    out = processor(images=image(84, 56), text="<image>", max_pixels=28 * 28 * 4, return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 2, 4]]  # 56 x 84 scaled down into 28 x 28 x 4 pixels: 28 x 56
    assert (out["input_ids"] == processor.image_token_id).sum() == 2


def user(*content):
    return {"role": "user", "content": list(content)}


IMG = {"type": "image"}


def text(value):
    return {"type": "text", "text": value}


@pytest.mark.parametrize(
    "messages, kwargs, expected",
    [
        # SPEC 10 prompts: the user turn alone, no assistant turn.
        ([user(IMG, text("Generate an image."))], {}, "<|im_start|>user\n<image>\nGenerate an image.<|im_end|>\n"),
        (
            [user(IMG, text(T2I_PREFIX + "a red cat"))],
            {},
            "<|im_start|>user\n<image>\n" + T2I_PREFIX + "a red cat<|im_end|>\n",
        ),
        # SPEC 7 understanding queries end with the assistant prefix and, unless thinking, the empty think block.
        (
            [user(IMG, text("What is this?"))],
            {"add_generation_prompt": True},
            "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n<|im_start|>assistant\n" + EMPTY_THINK,
        ),
        (
            [user(IMG, text("What is this?"))],
            {"add_generation_prompt": True, "enable_thinking": False},
            "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n<|im_start|>assistant\n" + EMPTY_THINK,
        ),
        (
            [user(IMG, text("What is this?"))],
            {"add_generation_prompt": True, "enable_thinking": True},
            "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            [user(IMG, IMG, text("Which differs?"))],
            {"add_generation_prompt": True},
            "<|im_start|>user\nImage 1: <image>\nImage 2: <image>\nWhich differs?<|im_end|>\n<|im_start|>assistant\n"
            + EMPTY_THINK,
        ),
        ([{"role": "user", "content": "Plain text."}], {}, "<|im_start|>user\nPlain text.<|im_end|>\n"),
        (
            [{"role": "system", "content": "Be brief."}, user(text("Hi"))],
            {"add_generation_prompt": True},
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            + EMPTY_THINK,
        ),
    ],
)
def test_chat_template(processor, messages, kwargs, expected):
    assert processor.apply_chat_template(messages, **kwargs) == expected


@pytest.mark.parametrize("thinking", [False, True])
def test_chat_template_multi_turn(processor, thinking):
    messages = [
        user(IMG, text("What is it?")),
        {"role": "assistant", "content": [text("A cat.")]},
        user(IMG, IMG, text("And these?")),
    ]
    think = "" if thinking else EMPTY_THINK
    expected = (
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n"
        "<|im_start|>assistant\n" + think + "A cat.<|im_end|>\n"
        "<|im_start|>user\nImage 1: <image>\nImage 2: <image>\nAnd these?<|im_end|>\n"
        "<|im_start|>assistant\n" + think
    )
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=thinking)
    assert rendered == expected


def test_apply_chat_template_tokenizes_with_images(processor):
    picture = image(84, 56)
    messages = [user({"type": "image", "image": picture}, text("What is this?"))]
    out = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    direct = processor(images=picture, text=prompt, return_tensors="pt")
    assert set(out) == set(direct) == {"input_ids", "attention_mask", "pixel_values", "image_grid_thw"}
    for key in out:
        torch.testing.assert_close(out[key], direct[key])


def test_decode(processor, tokenizer):
    ids = processor(text="<|im_start|>user\nHello<|im_end|>", return_tensors="pt")["input_ids"]
    assert processor.batch_decode(ids) == ["<|im_start|>user\nHello<|im_end|>"]
    assert processor.decode(ids[0], skip_special_tokens=True) == "user\nHello"


def test_save_load_round_trip(processor, tmp_path):
    # AutoImageProcessor must resolve the image processor class by name; the package registers it the same way.
    AutoImageProcessor.register(OvisU1Config, image_processor_classes={"pil": OvisU1ImageProcessor}, exist_ok=True)
    processor.multimodal_max_length = 40
    processor.save_pretrained(tmp_path)
    loaded = OvisU1Processor.from_pretrained(tmp_path)
    assert loaded.multimodal_max_length == 40
    assert loaded.chat_template == processor.chat_template == processing_ovis_u1.CHAT_TEMPLATE
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert loaded.image_token_id == processor.image_token_id
    # Saved again and reloaded, the processor is the same (saving adds `auto_map` to the saved object, so compare
    # with its dictionary from before).
    expected_dict = loaded.to_dict()
    loaded.save_pretrained(tmp_path / "again")
    assert OvisU1Processor.from_pretrained(tmp_path / "again").to_dict() == expected_dict
    messages = [user(IMG, text("What is this? " * 10))]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    expected = processor(images=image(84, 56), text=prompt, return_tensors="pt")
    actual = loaded(images=image(84, 56), text=prompt, return_tensors="pt")
    assert expected["input_ids"].shape[1] == 40
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key])

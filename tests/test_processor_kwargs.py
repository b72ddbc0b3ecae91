"""OvisU1Processor keyword arguments routed as in every transformers processor, and the image-text-to-text pipeline."""

import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from tiny import tiny_image_processor, tiny_tokenizer
from transformers import pipeline

from ovis_u1_hf.modeling.processing_ovis_u1 import OvisU1Processor
from tiny_models import tiny_model


TEXTS = ["<image>\nWhat is in this picture?", "Hi"]


@pytest.fixture(scope="module")
def processor():
    return OvisU1Processor(tiny_image_processor(), tiny_tokenizer())


def picture(width=84, height=56, seed=0):
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def unpadded(processor, **kwargs):
    """The token ids of each text alone, with no padding."""
    return [processor(images=[picture()] if "<image>" in t else None, text=t, **kwargs)["input_ids"][0] for t in TEXTS]


def test_return_tensors_defaults_to_lists_like_other_processors(processor):
    out = processor(images=[picture()], text=TEXTS)
    assert isinstance(out["input_ids"], list) and isinstance(out["input_ids"][0], list)
    assert isinstance(processor(images=[picture()], text=TEXTS, return_tensors="pt")["input_ids"], torch.Tensor)
    assert isinstance(processor(images=[picture()], text=TEXTS, return_tensors="np")["input_ids"], np.ndarray)


@pytest.mark.parametrize("nested", [False, True])
def test_padding_side_and_max_length_padding_take_effect(processor, nested):
    first, second = unpadded(processor)
    pad = processor.tokenizer.pad_token_id
    text_kwargs = dict(padding="max_length", max_length=len(first) + 3, padding_side="right")
    kwargs = {"text_kwargs": text_kwargs} if nested else text_kwargs
    out = processor(images=[picture()], text=TEXTS, **kwargs)
    assert out["input_ids"] == [first + [pad] * 3, second + [pad] * (len(first) + 3 - len(second))]
    assert out["attention_mask"][1] == [1] * len(second) + [0] * (len(first) + 3 - len(second))
    default = processor(images=[picture()], text=TEXTS)  # longest, on the left
    assert default["input_ids"][1] == [pad] * (len(first) - len(second)) + second


def test_pad_to_multiple_of_and_no_padding(processor):
    first, second = unpadded(processor)
    multiple = processor(images=[picture()], text=TEXTS, pad_to_multiple_of=16)["input_ids"]
    assert {len(ids) for ids in multiple} == {-(-len(first) // 16) * 16}
    assert processor(images=[picture()], text=TEXTS, padding=False)["input_ids"] == [first, second]


def test_truncation_with_max_length_keeps_the_last_tokens(processor):
    first, _ = unpadded(processor, truncation=False)
    out = processor(images=[picture()], text=TEXTS[0], truncation=True, max_length=len(first) - 2)
    assert out["input_ids"][0] == first[2:]
    # Without `truncation`, the processor's own maximum applies; `truncation=False` lifts it.
    processor_short = OvisU1Processor(tiny_image_processor(), tiny_tokenizer(), multimodal_max_length=5)
    assert processor_short(images=[picture()], text=TEXTS[0])["input_ids"][0] == first[-5:]
    assert processor_short(images=[picture()], text=TEXTS[0], truncation=False)["input_ids"][0] == first


def test_image_kwargs_flat_or_nested_reach_the_image_processor(processor):
    flat = processor(images=[picture()], text=TEXTS[0], max_pixels=28 * 28 * 4, return_tensors="pt")
    nested = processor(
        images=[picture()], text=TEXTS[0], images_kwargs={"max_pixels": 28 * 28 * 4}, return_tensors="pt"
    )
    default = processor(images=[picture()], text=TEXTS[0], return_tensors="pt")
    assert flat["image_grid_thw"].tolist() == nested["image_grid_thw"].tolist() == [[1, 2, 4]]
    assert default["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert torch.equal(flat["pixel_values"], nested["pixel_values"])


def test_a_kwarg_given_twice_is_an_error(processor):
    with pytest.raises(ValueError, match="passed two times"):
        processor(text=TEXTS[1], padding="longest", text_kwargs={"padding": "max_length"})


def test_the_maximum_length_setting_is_not_a_call_argument(processor):
    with pytest.raises(ValueError, match="truncation=True, max_length=N"):
        processor(text=TEXTS[1], multimodal_max_length=3)


def test_videos_and_audio_are_refused(processor):
    with pytest.raises(ValueError, match="images and text only"):
        processor(text=TEXTS[1], videos=[np.zeros((2, 56, 56, 3), np.uint8)])


def test_image_text_to_text_pipeline_equals_generate(tmp_path, processor):
    model = tiny_model(
        vocab_size=len(processor.tokenizer),
        image_token_id=processor.image_token_id,
        visual_indicator_token_ids=[processor.image_start_token_id, processor.image_end_token_id],
    )
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    messages = [{"role": "user", "content": [{"type": "image", "image": picture()}, {"type": "text", "text": "Hi?"}]}]
    options = dict(max_new_tokens=5, do_sample=False, eos_token_id=None)

    answer = pipeline("image-text-to-text", model=str(tmp_path))(text=messages, generate_kwargs=options)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[picture()], text=prompt, return_tensors="pt")
    tokens = model.generate(**inputs, **options)[0, inputs["input_ids"].shape[1] :]
    expected = processor.decode(tokens, skip_special_tokens=True)
    assert answer[0]["generated_text"][-1] == {"role": "assistant", "content": expected}

    # The same folder as remote code, where the package is absent.
    picture().save(tmp_path / "picture.png")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["ovis_u1_hf"] = None
        from PIL import Image
        from transformers import pipeline
        pipe = pipeline("image-text-to-text", model={str(tmp_path)!r}, trust_remote_code=True)
        assert type(pipe.model).__module__.startswith("transformers_modules"), type(pipe.model).__module__
        image = Image.open({str(tmp_path / "picture.png")!r})
        content = [{{"type": "image", "image": image}}, {{"type": "text", "text": "Hi?"}}]
        messages = [{{"role": "user", "content": content}}]
        print(repr(pipe(text=messages, generate_kwargs={options!r})[0]["generated_text"][-1]["content"]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "", "HF_HOME": str(tmp_path / "hf_home")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == repr(expected)


def test_assistant_tokens_mask_marks_what_the_assistant_says(processor):
    messages = [
        {"role": "user", "content": [{"type": "image", "image": picture()}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A test pattern."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Quite."},
    ]
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    assert len(mask) == len(ids) and "offset_mapping" not in out
    tokenizer = processor.tokenizer
    marked = [token for token, keep in zip(ids, mask) if keep]
    expected = tokenizer("A test pattern.<|im_end|>", add_special_tokens=False)["input_ids"]
    expected += tokenizer("Quite.<|im_end|>", add_special_tokens=False)["input_ids"]
    assert marked == expected
    # The image's tokens and the empty think block are prompt.
    assert not any(keep for token, keep in zip(ids, mask) if token == processor.image_token_id)
    assert "<think>" not in tokenizer.decode(marked)

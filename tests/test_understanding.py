"""Understanding end to end: chat template -> OvisU1Processor -> OvisU1ForConditionalGeneration.generate."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from ovis_u1_hf import OvisU1Processor
from tiny import tiny_image_processor, tiny_tokenizer
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def processor():
    return OvisU1Processor(tiny_image_processor(), tiny_tokenizer())


def model_for(processor, **kwargs):
    return tiny_model(
        vocab_size=len(processor.tokenizer),
        image_token_id=processor.image_token_id,
        visual_indicator_token_ids=[processor.image_start_token_id, processor.image_end_token_id],
        **kwargs,
    )


def random_image(width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def chat(question, num_images=1):
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def test_batch_of_two_prompts_equals_each_alone(processor):
    model = model_for(processor)
    cat, dog, sky = random_image(90, 60, 0), random_image(40, 70, 1), random_image(56, 56, 2)
    prompts = [
        processor.apply_chat_template(chat("what is in the picture of a cat?"), add_generation_prompt=True),
        processor.apply_chat_template(chat("compare them", num_images=2), add_generation_prompt=True),
    ]
    batch = processor(images=[[cat], [dog, sky]], text=prompts, return_tensors="pt")
    assert (batch["attention_mask"][:, 0] == 0).any()  # left padded
    greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(**batch).logits
        generated = model.generate(**batch, **greedy)[:, batch["input_ids"].shape[1] :]
        for row, (images, prompt) in enumerate(zip([[cat], [dog, sky]], prompts)):
            alone = processor(images=images, text=prompt, return_tensors="pt")
            length = alone["input_ids"].shape[1]
            torch.testing.assert_close(logits[row, -length:], model(**alone).logits[0], atol=1e-5, rtol=1e-5)
            assert generated[row].tolist() == model.generate(**alone, **greedy)[0, length:].tolist()


def test_text_only_chat(processor):
    model = model_for(processor)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": "tell me about cats"}], add_generation_prompt=True
    )
    inputs = processor(text=prompt, return_tensors="pt")
    assert "pixel_values" not in inputs
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert output.shape == (1, inputs["input_ids"].shape[1] + 5)


def test_truncated_sequence_matches_manual_truncation(processor):
    """Over-long inputs keep their last tokens; the cut image contributes its trailing visual tokens."""
    model = model_for(processor)
    image = random_image(112, 112, 3)
    prompt = processor.apply_chat_template(chat("describe"), add_generation_prompt=True)
    full = processor(images=[image], text=prompt, return_tensors="pt")
    keep = full["input_ids"].shape[1] - 6
    cut = processor(images=[image], text=prompt, truncation=True, max_length=keep, return_tensors="pt")
    assert cut["input_ids"].shape[1] == keep
    with torch.no_grad():
        embeds = {}

        def capture(module, args, kwargs):
            embeds.setdefault("full", kwargs["inputs_embeds"])

        handle = model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
        model(**full)
        handle.remove()
        expected_hidden = model.model.language_model(inputs_embeds=embeds["full"][:, -keep:]).last_hidden_state
        torch.testing.assert_close(model(**cut).logits, model.lm_head(expected_hidden), atol=1e-5, rtol=1e-5)


def test_remote_code_processor_and_model_without_the_package(processor, tmp_path):
    model = model_for(processor)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    image = random_image(80, 50, 4)
    image.save(tmp_path / "image.png")
    prompt = processor.apply_chat_template(chat("what is it?"), add_generation_prompt=True)
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["ovis_u1_hf"] = None  # the package cannot be imported in this process
        from PIL import Image
        from transformers import AutoModel, AutoProcessor
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
        messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "what is it?"}}]}}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=[Image.open({str(tmp_path / "image.png")!r})], text=prompt, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        print(type(processor).__module__, output[0, inputs["input_ids"].shape[1]:].tolist())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": ""}, stdin=subprocess.DEVNULL,
    )
    assert "Do you wish to run the custom code" not in result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    module, tokens = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert module.startswith("transformers_modules")
    assert tokens == str(expected.tolist())

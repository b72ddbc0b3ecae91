"""The `ovis-u1` command line on a tiny saved pipeline folder."""

import numpy as np
import pytest
import torch
from PIL import Image

from ovis_u1_hf.cli import main
from tiny_pipelines import tiny_text_to_image_pipeline


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    tiny_text_to_image_pipeline().save_pretrained(path)
    return path


def test_generate_writes_the_pipeline_image(folder, tmp_path, capsys):
    output = tmp_path / "out.png"
    args = ["generate", "a red cat", "--model", str(folder), "--height", "32", "--width", "48", "--steps", "2"]
    assert main([*args, "--seed", "3", "--output", str(output)]) == 0
    assert capsys.readouterr().out.strip() == str(output)
    pipe = tiny_text_to_image_pipeline()
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a red cat", height=32, width=48, num_inference_steps=2, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(np.asarray(Image.open(output)), np.asarray(expected.images[0]))


def test_generate_count_writes_numbered_files(folder, tmp_path):
    args = ["generate", "a cat", "--model", str(folder), "--height", "32", "--width", "32", "--steps", "1"]
    main([*args, "--count", "2", "--output", str(tmp_path / "cat.png")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat-0.png", "cat-1.png"]


def test_edit_writes_an_image_of_the_edit_size(folder, tmp_path):
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(source)
    output = tmp_path / "edited.png"
    main(["edit", str(source), "make it blue", "--model", str(folder), "--steps", "1", "--output", str(output)])
    assert Image.open(output).size == (96, 64)  # smart_resize(40, 56, 32, 3136, 1003520) = (64, 96)


def test_chat_streams_the_greedy_answer(folder, capsys):
    from ovis_u1_hf import OvisU1ForConditionalGeneration, OvisU1Processor

    image = folder / "image.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(image)
    main(["chat", "what is it?", "--image", str(image), "--model", str(folder), "--max-new-tokens", "5"])
    printed = capsys.readouterr().out

    model = OvisU1ForConditionalGeneration.from_pretrained(folder / "text_encoder")
    processor = OvisU1Processor.from_pretrained(folder / "processor")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[Image.open(image)], text=prompt, return_tensors="pt")
    tokens = model.generate(**inputs, max_new_tokens=5, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert printed == processor.decode(tokens, skip_special_tokens=True) + "\n"

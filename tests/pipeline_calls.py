"""Fixed pipeline calls shared by in-process tests and subprocesses that cannot import ovis_u1_hf."""

import numpy as np
import torch
from PIL import Image


T2I = dict(prompt="a red cat", height=32, width=48, num_inference_steps=2, output_type="np")
EDIT = dict(prompt="make it blue", num_inference_steps=2, output_type="np")


def edit_image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))


def run(pipe, kind):
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    if kind == "t2i":
        return pipe(generator=generator, **T2I).images
    return pipe(image=edit_image(), generator=generator, **EDIT).images


def understanding_outputs(model, processor) -> dict:
    """Logits of a prompt with an image, and greedy tokens generated through the key/value cache."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[edit_image()], text=prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    return {"logits": logits.numpy(), "tokens": tokens.numpy()}


def all_outputs(t2i, edit, model, processor) -> dict:
    return {"t2i": run(t2i, "t2i"), "edit": run(edit, "edit"), **understanding_outputs(model, processor)}

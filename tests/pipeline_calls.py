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

"""What the pipelines do with their components: the condition image's size rule (SPEC 10) and the VAE kept in
float32 from load time on."""

import logging

import numpy as np
import PIL.Image
import pytest
import torch

from ovis_u1_hf import OvisU1Processor
from ovis_u1_hf.pipelines import OvisU1EditPipeline, OvisU1TextToImagePipeline
from test_pipelines import random_image, spec_condition_image, spec_smart_resize
from tiny import tiny_image_processor, tiny_tokenizer
from tiny_pipelines import tiny_components, tiny_text_to_image_pipeline


@pytest.mark.parametrize("patch_size,hidden_stride", [(16, 2), (14, 1), (8, 4)])
def test_condition_image_uses_factor_28_whatever_the_patch_grid(patch_size, hidden_stride):
    """SPEC 10 resizes the condition image with factor 28 (the released 14 x 2); the processor's own grid may differ."""
    image_processor = tiny_image_processor(
        patch_size=patch_size, hidden_stride=hidden_stride, min_pixels=48 * 48 * 4, max_pixels=48 * 48 * 16
    )
    assert patch_size * hidden_stride != 28
    pipe = OvisU1TextToImagePipeline(**{**tiny_components(), "processor": OvisU1Processor(image_processor, tiny_tokenizer())})
    for width, height in ((48, 32), (80, 48), (64, 64), (256, 96)):
        image = random_image(width + 7, height + 3, seed=width)
        got = pipe.condition_image(image, width, height)
        want_h, want_w = spec_smart_resize(height, width, 28, 3136, image_processor.min_pixels)
        assert got.size == (want_w, want_h)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(spec_condition_image(pipe, image, width, height)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    tiny_text_to_image_pipeline().save_pretrained(path)
    return path


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def diffusers_log():
    handler = _Records()
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def test_vae_is_float32_from_load_time(folder, diffusers_log, monkeypatch):
    pipe = OvisU1TextToImagePipeline.from_pretrained(folder, dtype=torch.bfloat16)
    assert pipe.vae.dtype == torch.float32
    assert pipe.transformer.dtype == pipe.text_encoder.dtype == torch.bfloat16
    edit = OvisU1EditPipeline.from_pipe(pipe, dtype=torch.bfloat16)
    assert edit.vae.dtype == torch.float32 and edit.transformer.dtype == torch.bfloat16
    pipe.to(torch.bfloat16)
    assert pipe.vae.dtype == torch.float32
    # No cast at call time: the VAE is never moved while sampling.
    moves = []
    monkeypatch.setattr(pipe.vae, "to", lambda *a, **k: moves.append((a, k)))
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a cat", height=32, width=32, num_inference_steps=1, output_type="np").images
    assert moves == [] and np.isfinite(out).all()
    assert not [m for m in diffusers_log if "float32" in m]


def test_vae_dtype_can_still_be_chosen_per_component(folder):
    pipe = OvisU1TextToImagePipeline.from_pretrained(
        folder, dtype={"default": torch.bfloat16, "vae": torch.float16}
    )
    assert pipe.vae.dtype == torch.float16 and pipe.transformer.dtype == torch.bfloat16

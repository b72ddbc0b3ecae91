"""What the pipelines do with their components: the condition image's size rule (SPEC 10)."""

import numpy as np
import pytest

from ovis_u1_hf import OvisU1Processor
from ovis_u1_hf.pipelines import OvisU1TextToImagePipeline
from test_pipelines import random_image, spec_condition_image, spec_smart_resize
from tiny import tiny_image_processor, tiny_tokenizer
from tiny_pipelines import tiny_components


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

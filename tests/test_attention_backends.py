"""The transformer's attention backend is diffusers' choice (`set_attention_backend`, the `attention_backend` context
manager): every attention of the token refiner and the MMDiT follows it, and with a backend whose kernels take no key
mask (flash-attn, Sage) the pipelines never pass one: each guidance branch and prompt goes in a call of its own,
unpadded."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models import attention_dispatch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

from ovis_u1_hf.pipelines import OvisU1EditPipeline
from ovis_u1_hf.pipelines.pipeline_ovis_u1 import MASKLESS_ATTENTION_BACKENDS, attention_backend
from pipeline_calls import EDIT, T2I, edit_image
from tiny_pipelines import tiny_edit_pipeline, tiny_text_to_image_pipeline


pytestmark = pytest.mark.usefixtures("keep_active_attention_backend")

PROMPTS = ["a red cat", "a very small green frog sitting on a large wet stone"]
INSTRUCTIONS = ["make it blue", "turn the whole picture into a watercolour painting"]


def generate(pipe, **kwargs):
    generator = torch.Generator().manual_seed(0)
    if isinstance(pipe, OvisU1EditPipeline):
        kwargs = {**EDIT, "image": [edit_image()] * 2, "prompt": INSTRUCTIONS, **kwargs}
        return pipe(generator=generator, **kwargs).images
    return pipe(generator=generator, **{**T2I, "prompt": PROMPTS, **kwargs}).images


@pytest.fixture
def flash_calls(monkeypatch):
    """diffusers' "flash" backend, made selectable without flash-attn: its kernel is replaced by PyTorch's attention,
    which fails the test if it is given a mask. Returns the key lengths of the calls."""
    calls = []

    def flash(query, key, value, attn_mask=None, dropout_p=0.0, scale=None, is_causal=False, return_lse=False,
              _parallel_config=None):  # fmt: skip
        assert attn_mask is None, "a key mask reached a backend that takes none"
        calls.append(key.shape[1])
        out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (query, key, value)), scale=scale)
        return out.transpose(1, 2)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, AttentionBackendName.FLASH, flash)
    monkeypatch.setattr(attention_dispatch, "_check_attention_backend_requirements", lambda backend: None)
    return calls


def backends(model):
    return {module.processor._attention_backend for module in model.modules() if isinstance(module, AttentionModuleMixin)}


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", ["_native_math", "flex"])
def test_every_attention_follows_set_attention_backend(backend):
    pipe = tiny_text_to_image_pipeline()
    expected = generate(pipe)
    pipe.transformer.set_attention_backend(backend)
    assert backends(pipe.transformer) == {AttentionBackendName(backend)}
    assert attention_backend(pipe.transformer) == backend
    np.testing.assert_allclose(generate(pipe), expected, atol=1e-5, rtol=0)
    pipe.transformer.reset_attention_backend()
    assert backends(pipe.transformer) == {None}


def test_the_attention_backend_context_manager_is_followed(flash_calls):
    pipe = tiny_text_to_image_pipeline()
    with attention_dispatch.attention_backend("flash"):
        assert attention_backend(pipe.transformer) == "flash" and not pipe.attention_takes_masks()
        generate(pipe)
    assert flash_calls


@pytest.mark.parametrize("make", [tiny_text_to_image_pipeline, tiny_edit_pipeline], ids=["t2i", "edit"])
def test_a_maskless_backend_gets_unpadded_calls(make, flash_calls):
    pipe = make()
    expected = generate(pipe)
    assert pipe.batches_guidance_branches("cuda")  # on accelerators: one masked call per step
    pipe.transformer.set_attention_backend("flash")
    assert "flash" in MASKLESS_ATTENTION_BACKENDS and not pipe.attention_takes_masks()
    assert not pipe.batches_guidance_branches("cuda")  # with flash: one call per branch and prompt
    images = generate(pipe)
    np.testing.assert_allclose(images, expected, atol=1e-5, rtol=0)
    # The prompts' conditions differ in length: the refiner and the MMDiT saw each alone.
    assert len(set(flash_calls)) > 2


def test_a_maskless_backend_refuses_one_masked_call(flash_calls):
    pipe = tiny_text_to_image_pipeline()
    pipe.transformer.set_attention_backend("flash")
    pipe.batch_guidance_branches = True
    with pytest.raises(ValueError, match="attention backend does not take"):
        generate(pipe)
    pipe.batch_guidance_branches = None
    generate(pipe, prompt=PROMPTS[0], guidance_scale=1.0)  # one branch, one prompt: nothing to mask

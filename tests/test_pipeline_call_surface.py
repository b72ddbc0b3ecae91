"""The diffusers `__call__` surface of the Ovis-U1 pipelines: precomputed conditions, custom schedules, properties that
step callbacks read and change, and the tensors they may see."""

import numpy as np
import pytest
import torch

from tiny_pipelines import tiny_components, tiny_scheduler
from ovis_u1_hf.pipelines import OvisU1EditPipeline, OvisU1TextToImagePipeline
from test_pipelines import random_image, randn, spec_schedule


T2I = dict(height=32, width=48, num_inference_steps=2, output_type="np")
EDIT = dict(num_inference_steps=2, output_type="np")


@pytest.fixture(scope="module")
def components():
    return tiny_components()


@pytest.fixture
def t2i(components):
    pipe = OvisU1TextToImagePipeline(**{**components, "scheduler": tiny_scheduler()})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def edit(components):
    pipe = OvisU1EditPipeline(**{**components, "scheduler": tiny_scheduler()})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_text_to_image_encode_prompt_reused_across_calls_and_seeds(t2i):
    prompts = ["a red cat", "a small yellow moon above the old house"]
    embeds, mask, negative, negative_mask = t2i.encode_prompt(prompts, height=32, width=48, negative_prompt="blurry")
    assert embeds.shape[0] == negative.shape[0] == 2 and embeds.shape[-1] == 2 * t2i.text_encoder.config.hidden_size
    assert mask.dtype == torch.bool and not mask[0].all() and mask[1].all()  # left padded to the longer prompt
    for seed in (0, 1):
        want = t2i(prompts, negative_prompt="blurry", generator=seeded(seed), **T2I).images
        got = t2i(
            prompt_embeds=embeds, prompt_embeds_mask=mask, negative_prompt_embeds=negative,
            negative_prompt_embeds_mask=negative_mask, generator=seeded(seed), **T2I,
        ).images
        np.testing.assert_array_equal(got, want)
    # Without guidance there are no negative conditions, and none are needed.
    embeds, mask, negative, negative_mask = t2i.encode_prompt("a red cat", 32, 48, do_classifier_free_guidance=False)
    assert negative is None and negative_mask is None
    want = t2i("a red cat", guidance_scale=1.0, generator=seeded(), **T2I).images
    got = t2i(prompt_embeds=embeds, prompt_embeds_mask=mask, guidance_scale=1.0, generator=seeded(), **T2I).images
    np.testing.assert_array_equal(got, want)


def test_text_to_image_prompt_embeds_without_negative_embeds(t2i):
    embeds, mask, _, _ = t2i.encode_prompt("a red cat", 32, 48)
    want = t2i("a red cat", negative_prompt="blurry", generator=seeded(), **T2I).images
    got = t2i(prompt_embeds=embeds, prompt_embeds_mask=mask, negative_prompt="blurry", generator=seeded(), **T2I).images
    # The negative condition is computed alone (its own padding): equal up to float rounding.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_edit_encode_prompt_reused_across_calls_and_seeds(edit):
    image = random_image(100, 50, seed=1)
    embeds, mask, negative, negative_mask = edit.encode_prompt("make it blue", image)
    assert embeds.shape[0] == 1 and negative.shape[0] == 2
    for seed in (0, 1):
        want = edit(image, "make it blue", generator=seeded(seed), **EDIT).images
        got = edit(
            image, prompt_embeds=embeds, prompt_embeds_mask=mask, negative_prompt_embeds=negative,
            negative_prompt_embeds_mask=negative_mask, generator=seeded(seed), **EDIT,
        ).images
        np.testing.assert_array_equal(got, want)


def test_edit_negative_prompt(edit):
    image = random_image(64, 64, seed=2)
    default = edit(image, "blue", generator=seeded(), **EDIT).images
    released = edit(image, "blue", negative_prompt="Generate an image.", generator=seeded(), **EDIT).images
    np.testing.assert_array_equal(released, default)
    negative = edit(image, "blue", negative_prompt="a blurry photo", generator=seeded(), **EDIT).images
    assert np.abs(negative - default).max() > 1e-3
    embeds = edit.encode_prompt("blue", image, negative_prompt="a blurry photo")
    got = edit(
        image, prompt_embeds=embeds[0], prompt_embeds_mask=embeds[1], negative_prompt_embeds=embeds[2],
        negative_prompt_embeds_mask=embeds[3], generator=seeded(), **EDIT,
    ).images
    np.testing.assert_array_equal(got, negative)


def test_sigmas_set_the_schedule(t2i):
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append(float(t))
        return {}

    sigmas = [1.0, 0.75, 0.25]
    out = t2i("a cat", sigmas=sigmas, generator=seeded(), callback_on_step_end=callback, **T2I).images
    assert t2i.num_timesteps == 3 and len(seen) == 3
    # Shifted as the default schedule is (6 noise tokens).
    mu = 0.5 + (1.15 - 0.5) * (6 - 256) / (4096 - 256)
    expected = [np.exp(mu) / (np.exp(mu) + (1 / s - 1)) for s in sigmas]
    np.testing.assert_allclose(np.array(seen) / 1000, expected, rtol=0, atol=1e-6)
    # The default schedule as explicit sigmas gives the default images.
    default_sigmas = list(np.linspace(1.0, 0.0, 3)[:-1])
    np.testing.assert_array_equal(
        t2i("a cat", sigmas=default_sigmas, generator=seeded(), **T2I).images,
        t2i("a cat", generator=seeded(), **T2I).images,
    )
    assert np.abs(out - t2i("a cat", generator=seeded(), **T2I).images).max() > 1e-4
    with pytest.raises(ValueError, match="sigmas"):
        t2i("a cat", sigmas=[0.5, 0.9], **T2I)


def test_edit_sigmas(edit):
    image = random_image(64, 64, seed=3)
    default = edit(image, "blue", generator=seeded(), **EDIT).images
    explicit = edit(image, "blue", sigmas=[1.0, 0.5], generator=seeded(), **EDIT).images
    np.testing.assert_array_equal(explicit, default)
    assert edit.num_timesteps == 2


def test_callback_reads_properties_and_changes_guidance(t2i):
    """As diffusers' `test_callback_cfg`: a callback reads the guidance properties and changes the scale mid-run."""
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append((pipe.guidance_scale, pipe.do_classifier_free_guidance, pipe.num_timesteps))
        pipe._guidance_scale = 1.0 if i == 0 else pipe._guidance_scale
        return {}

    latents = randn(1, 4, 4, 6, seed=4)
    kwargs = dict(height=32, width=48, num_inference_steps=3, guidance_scale=4.0, latents=latents, output_type="latent")
    changed = t2i("a cat", callback_on_step_end=callback, **kwargs).images
    assert seen == [(4.0, True, 3), (1.0, False, 3), (1.0, False, 3)]
    constant = t2i("a cat", **kwargs).images
    assert (changed - constant).abs().max() > 1e-4
    # Guided only at the first step: the same as guidance 1 from the start except for that step.
    unguided = t2i("a cat", **{**kwargs, "guidance_scale": 1.0}).images
    assert (changed - unguided).abs().max() > 1e-4


def test_edit_callback_changes_both_scales(edit):
    image = random_image(64, 64, seed=5)
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append((pipe.guidance_scale, pipe.image_guidance_scale, pipe.do_classifier_free_guidance))
        pipe._guidance_scale, pipe._image_guidance_scale = 2.0, 1.0
        return {}

    kwargs = dict(num_inference_steps=3, latents=randn(1, 4, 8, 8, seed=6), output_type="latent")
    changed = edit(image, "blue", generator=seeded(), callback_on_step_end=callback, **kwargs).images
    assert seen == [(6.0, 1.5, True), (2.0, 1.0, True), (2.0, 1.0, True)]
    assert (changed - edit(image, "blue", generator=seeded(), **kwargs).images).abs().max() > 1e-4


def test_callback_sees_and_replaces_conditions(t2i):
    embeds, mask, negative, negative_mask = t2i.encode_prompt("a cat", 32, 48)
    other = t2i.encode_prompt("a dog on a boat", 32, 48)
    seen = {}

    def swap(pipe, i, t, kwargs):
        seen[i] = (kwargs["prompt_embeds"].clone(), kwargs["prompt_embeds_mask"].clone())
        if i == 0:
            # Replace the conditional rows from the second step on.
            stacked, stacked_mask = pipe.stack_conditions([other[:2], other[2:]], kwargs["prompt_embeds"].device)
            return {"prompt_embeds": stacked, "prompt_embeds_mask": stacked_mask}
        return {}

    latents = randn(1, 4, 4, 6, seed=7)
    kwargs = dict(height=32, width=48, num_inference_steps=2, latents=latents, output_type="latent")
    swapped = t2i(
        "a cat", callback_on_step_end=swap,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "prompt_embeds_mask"], **kwargs,
    ).images
    assert (swapped - t2i("a cat", **kwargs).images).abs().max() > 1e-4
    stacked, stacked_mask = t2i.stack_conditions([(embeds, mask), (negative, negative_mask)], "cpu")
    torch.testing.assert_close(seen[0][0], stacked, rtol=0, atol=0)
    assert torch.equal(seen[0][1], stacked_mask)
    assert seen[1][0].shape[1] == other[0].shape[1]  # the replaced conditions reach the next step

"""The FLUX helpers of diffusers that the Ovis-U1 pipelines reuse (from the modules of Ovis-Image and Qwen-Image Edit,
which hold the same code) are FLUX's and give the released layouts and schedule (SPEC 11), in the units the pipelines
call them with."""

import copy

import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift, retrieve_timesteps
from diffusers.pipelines.flux.pipeline_flux_kontext import FluxKontextPipeline

from ovis_u1_hf.pipelines import OvisU1EditPipeline, OvisU1TextToImagePipeline
from test_pipelines import close, random_image, spec_context, spec_ids, spec_pack, spec_unpack
from tiny_pipelines import tiny_components, tiny_scheduler


@pytest.fixture(scope="module")
def components():
    return tiny_components()


def test_pack_latents_is_flux_packing():
    latents = torch.randn(2, 4, 6, 10, generator=torch.Generator().manual_seed(0))
    packed = OvisU1TextToImagePipeline.pack_latents(latents)
    # FLUX's packing is the released `b c (h 2) (w 2) -> b (h w) (c 2 2)`, channel-major in each 2x2 group.
    assert torch.equal(FluxPipeline._pack_latents(latents, 2, 4, 6, 10), spec_pack(latents))
    assert torch.equal(packed, spec_pack(latents))
    # FLUX unpacks from the image size (48 x 80 pixels, VAE factor 8); the pipelines from the token grid (3 x 5).
    assert torch.equal(FluxPipeline._unpack_latents(packed, 48, 80, 8), spec_unpack(packed, 3, 5))
    assert torch.equal(OvisU1TextToImagePipeline.unpack_latents(packed, 3, 5), latents)


@pytest.mark.parametrize("height,width", [(1, 1), (3, 5), (64, 48)])
def test_latent_ids_are_flux_and_flux_kontext_ids(height, width):
    cpu = torch.device("cpu")
    noise_ids = OvisU1TextToImagePipeline.latent_ids(height, width, 0, cpu)
    assert noise_ids.dtype == torch.float32
    assert torch.equal(noise_ids, FluxPipeline._prepare_latent_image_ids(1, height, width, cpu, torch.float32))
    assert torch.equal(noise_ids, spec_ids(height, width, 0))
    # An edit's context image is index 1 in column 0, as FLUX Kontext places its context image.
    kontext_ids = FluxKontextPipeline._prepare_latent_image_ids(1, height, width, cpu, torch.float32)
    kontext_ids[..., 0] = 1
    context_ids = OvisU1EditPipeline.latent_ids(height, width, 1, cpu)
    assert torch.equal(context_ids, kontext_ids)
    assert torch.equal(context_ids, spec_ids(height, width, 1))


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("steps,num_tokens", [(1, 15), (4, 256), (7, 1024), (50, 4096), (3, 6000)])
def test_timesteps_are_the_flux_pipeline_schedule(components, shift, steps, num_tokens):
    pipe = OvisU1TextToImagePipeline(**{**components, "scheduler": tiny_scheduler(shift)})
    flux_scheduler = copy.deepcopy(pipe.scheduler)
    timesteps = pipe.timesteps(steps, num_tokens, torch.device("cpu"))
    # As `FluxPipeline.__call__` sets its schedule.
    config = flux_scheduler.config
    mu = calculate_shift(
        num_tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift
    )
    sigmas = np.linspace(1.0, 1 / steps, steps)
    flux_timesteps, flux_steps = retrieve_timesteps(flux_scheduler, steps, "cpu", sigmas=sigmas, mu=mu)
    assert flux_steps == steps
    assert torch.equal(timesteps, flux_timesteps)
    assert torch.equal(pipe.scheduler.sigmas, flux_scheduler.sigmas)


@torch.no_grad()
def test_edit_image_is_preprocessed_and_encoded_as_released(components):
    edit = OvisU1EditPipeline(**components)
    image = random_image(96, 64, seed=3)
    # SPEC 11: `x / 127.5 - 1` in [-1, 1], CHW; at the output size the image processor resizes nothing.
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    assert torch.equal(edit.image_processor.preprocess([image], height=64, width=96), pixels)
    # A sample of the VAE posterior drawn with the generator, scaled and packed (the VAE's CPU convolutions are not
    # bit-reproducible from call to call).
    context = edit.encode_image([image], torch.Generator().manual_seed(5), torch.device("cpu"))
    close(context, spec_context(edit, image, 5))
    other_seed = edit.encode_image([image], torch.Generator().manual_seed(6), torch.device("cpu"))
    assert (other_seed - context).abs().max() > 1e-3

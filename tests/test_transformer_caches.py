"""diffusers' cache hooks (`transformer.enable_cache`) on OvisU1Transformer2DModel, run through the pipelines: each
config either reuses cached work (a finite output that differs, with fewer block computations) or, set to never skip,
leaves the output unchanged; `disable_cache()` restores the uncached output exactly."""

import pytest
import torch
from diffusers.hooks import (
    FasterCacheConfig,
    FirstBlockCacheConfig,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)

from ovis_u1_hf.pipelines import OvisU1EditPipeline
from pipeline_calls import edit_image
from tiny_pipelines import tiny_edit_pipeline, tiny_text_to_image_pipeline


STEPS = 6
BASELINES = {}  # uncached outputs, by pipeline


def generate(pipe):
    generator = torch.Generator().manual_seed(0)
    kwargs = dict(num_inference_steps=STEPS, output_type="latent", generator=generator)
    if isinstance(pipe, OvisU1EditPipeline):
        return pipe(image=edit_image(), prompt="make it blue", **kwargs).images
    return pipe("a red cat", height=32, width=48, **kwargs).images


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.fixture(scope="module")
def t2i():
    pipe = tiny_text_to_image_pipeline()
    pipe.batch_guidance_branches = True  # one transformer call per step, so a probe counts steps
    return pipe


@pytest.fixture(scope="module")
def edit():
    pipe = tiny_edit_pipeline()
    pipe.batch_guidance_branches = True
    return pipe


def run_cached(pipe, config, probe):
    """The uncached output, the cached one with how often `probe` computed, and the output after `disable_cache`."""
    if id(pipe) not in BASELINES:
        BASELINES[id(pipe)] = generate(pipe)
    baseline = BASELINES[id(pipe)]
    calls = count_calls(probe)
    pipe.transformer.enable_cache(config)
    try:
        cached = generate(pipe)
    finally:
        pipe.transformer.disable_cache()
    computed = len(calls)
    restored = generate(pipe)
    assert torch.equal(restored, baseline), "disable_cache() must restore the uncached output exactly"
    return baseline, cached, computed


def assert_reused(baseline, cached, computed):
    assert torch.isfinite(cached).all()
    assert 0 < computed < STEPS
    assert not torch.allclose(cached, baseline, atol=1e-4)


def timestep(pipe):
    return lambda: pipe.current_timestep


@pytest.mark.parametrize("kind", ["t2i", "edit"])
def test_first_block_cache(kind, request):
    pipe = request.getfixturevalue(kind)
    tail = pipe.transformer.single_transformer_blocks[-1].attn
    # A threshold nothing exceeds: after the first step only the first block runs.
    baseline, cached, computed = run_cached(pipe, FirstBlockCacheConfig(threshold=1e9), tail)
    assert_reused(baseline, cached, computed)
    assert computed == 1
    # A threshold of zero never skips: the hooks alone change nothing.
    baseline, cached, computed = run_cached(pipe, FirstBlockCacheConfig(threshold=0.0), tail)
    assert computed == STEPS and torch.equal(cached, baseline)


@pytest.mark.parametrize("lite", [False, True])
def test_taylorseer_cache(t2i, lite):
    config = TaylorSeerCacheConfig(
        cache_interval=2, disable_cache_before_step=2, taylor_factors_dtype=torch.float32, use_lite_mode=lite
    )
    probe = t2i.transformer.transformer_blocks[0].attn.to_q
    baseline, cached, computed = run_cached(t2i, config, probe)
    assert_reused(baseline, cached, computed)
    assert computed == 4  # steps 0, 1 (warm-up), 3 and 5 (every other step)
    never = TaylorSeerCacheConfig(disable_cache_before_step=STEPS, taylor_factors_dtype=torch.float32)
    baseline, cached, computed = run_cached(t2i, never, probe)
    assert computed == STEPS and torch.equal(cached, baseline)


def test_mag_cache(t2i, capsys):
    probe = t2i.transformer.single_transformer_blocks[-1].attn
    # Flat magnitude ratios: every step after the retained first one may reuse the last residual (at most 3 in a row).
    config = MagCacheConfig(mag_ratios=[1.0] * STEPS, num_inference_steps=STEPS, retention_ratio=0.2)
    baseline, cached, computed = run_cached(t2i, config, probe)
    assert_reused(baseline, cached, computed)
    # Calibration never skips, and measures one ratio per step.
    calibrate = MagCacheConfig(calibrate=True, num_inference_steps=STEPS)
    baseline, cached, computed = run_cached(t2i, calibrate, probe)
    assert computed == STEPS and torch.equal(cached, baseline)
    assert "Calibration Complete" in capsys.readouterr().out


def test_faster_cache(t2i):
    # Attention reuse only: the guidance branches share one call, so FasterCache's unconditional-branch estimate (a
    # batch of [unconditional, conditional] images) does not apply.
    config = FasterCacheConfig(
        spatial_attention_block_skip_range=2,
        spatial_attention_timestep_skip_range=(-1, 999),  # the first step (t = 1000) computes and fills the cache
        current_timestep_callback=timestep(t2i),
        attention_weight_callback=lambda _: 0.5,
        is_guidance_distilled=True,
    )
    probe = t2i.transformer.transformer_blocks[0].attn.to_q
    baseline, cached, computed = run_cached(t2i, config, probe)
    assert_reused(baseline, cached, computed)
    assert computed == 3  # the first step, then every other one


def test_pyramid_attention_broadcast(t2i):
    config = PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2,
        spatial_attention_timestep_skip_range=(-1, 1001),
        # The denoising blocks; the refiner runs once per image, outside the denoising loop.
        spatial_attention_block_identifiers=("^transformer_blocks", "^single_transformer_blocks"),
        current_timestep_callback=timestep(t2i),
    )
    probe = t2i.transformer.transformer_blocks[0].attn.to_q
    baseline, cached, computed = run_cached(t2i, config, probe)
    assert_reused(baseline, cached, computed)
    assert computed == 3


@pytest.mark.parametrize("kind", ["t2i", "edit"])
def test_first_block_cache_with_a_call_per_branch(kind, request):
    # Each guidance branch is its own transformer call, with its own cache context.
    pipe = request.getfixturevalue(kind)
    num_branches = 3 if kind == "edit" else 2
    pipe.batch_guidance_branches = False
    BASELINES.pop(id(pipe), None)
    try:
        tail = pipe.transformer.single_transformer_blocks[-1].attn
        baseline, cached, computed = run_cached(pipe, FirstBlockCacheConfig(threshold=1e9), tail)
        assert torch.isfinite(cached).all() and not torch.allclose(cached, baseline, atol=1e-4)
        assert computed == num_branches  # the first step of each branch
        baseline, cached, computed = run_cached(pipe, FirstBlockCacheConfig(threshold=0.0), tail)
        assert computed == STEPS * num_branches and torch.equal(cached, baseline)
    finally:
        pipe.batch_guidance_branches = True
        BASELINES.pop(id(pipe), None)

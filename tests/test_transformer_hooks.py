"""The model-level hooks diffusers applies to in-library transformers (layerwise casting, regional compilation, group
offloading, context parallelism), on OvisU1Transformer2DModel: one test per declared capability."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

from test_transformer import inputs, tiny_model


def forward(model, kw):
    with torch.no_grad():
        return model(**kw, return_dict=False)[0]


def test_no_split_modules_name_the_block_classes():
    model = tiny_model()
    classes = {type(module).__name__ for module in model.modules()}
    assert set(model._no_split_modules) <= classes
    assert set(model._repeated_blocks) <= set(model._no_split_modules)


@pytest.mark.parametrize("storage_dtype", [torch.float8_e4m3fn, torch.bfloat16])
def test_layerwise_casting_keeps_embeddings_and_norms_in_the_compute_dtype(storage_dtype):
    model = tiny_model()
    kw = inputs(context_hw=(2, 2))
    expected = forward(model, kw)
    model.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=torch.float32)
    stored = {name for name, p in model.named_parameters() if p.dtype == storage_dtype}
    high = {name for name, p in model.named_parameters() if p.dtype == torch.float32}
    assert stored and stored | high == {name for name, _ in model.named_parameters()}
    for name in high:
        # Kept: embeddings, norms and adaLN modulations, and parameters outside Linear layers (class token, QK norms).
        # (diffusers also always keeps a top-level `proj_out`.)
        assert any(key in name for key in ("embed", "norm", "cls_token")) or name.startswith("proj_out."), name
    for name in stored:
        assert not any(key in name for key in ("embed", "norm")), name
    assert {"transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.0.proj_mlp.weight"} <= stored
    assert {"refiner.blocks.0.attn.to_q.weight", "refiner.proj_in.weight"} <= stored
    assert {"transformer_blocks.0.norm1.linear.weight", "x_embedder.weight", "refiner.pooled_embedder.linear_1.weight"} <= high
    out = forward(model, kw)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # Storage rounds the weights: close to, not equal to, the float32 output.
    tolerance = 0.02 if storage_dtype == torch.bfloat16 else 0.3
    assert 0 < (out - expected).abs().max() < tolerance * expected.abs().max()


def test_compile_repeated_blocks_matches_eager():
    torch._dynamo.reset()
    model = tiny_model(num_layers=1, num_single_layers=1, refiner_num_layers=1)
    kw = inputs(context_hw=(2, 2))
    expected = forward(model, kw)
    model.compile_repeated_blocks(backend="aot_eager", fullgraph=True)
    compiled = [type(m).__name__ for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert sorted(compiled) == ["OvisU1SingleTransformerBlock", "OvisU1TransformerBlock"]
    torch.testing.assert_close(forward(model, kw), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_group_offloading_keeps_outputs(offload_type):
    model = tiny_model()
    kw = inputs(context_hw=(2, 2))
    kw["encoder_attention_mask"] = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    expected = forward(model, kw)
    extra = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
    model.enable_group_offload(
        onload_device=torch.device("cpu"), offload_device=torch.device("cpu"), offload_type=offload_type,
        use_stream=False, **extra,
    )
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(model.transformer_blocks[0])
    assert registry.hooks or any(
        HookRegistry.check_if_exists_or_initialize(m).hooks for m in model.transformer_blocks[0].modules()
    )
    assert torch.equal(forward(model, kw), expected)


def test_context_parallel_plan_splits_every_token_stream_and_gathers_the_image():
    plan = tiny_model()._cp_plan
    splits = plan[""]
    assert set(splits) == {
        "hidden_states", "img_ids", "encoder_hidden_states", "encoder_attention_mask",
        "context_hidden_states", "context_ids", "context_attention_mask",
    }
    assert all(isinstance(s, ContextParallelInput) and not s.split_output for s in splits.values())
    assert {n: (s.split_dim, s.expected_dims) for n, s in splits.items() if "ids" in n} == {
        "img_ids": (0, 2), "context_ids": (0, 2)
    }
    assert all(s.split_dim == 1 for n, s in splits.items() if "ids" not in n)
    assert plan["proj_out"] == ContextParallelOutput(gather_dim=1, expected_dims=3)


def test_context_parallel_across_two_processes_equals_one_process(tmp_path):
    model = tiny_model()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    kw = inputs(batch=2, h=2, w=3, text_len=4, context_hw=(2, 2))
    condition = kw.pop("encoder_hidden_states")
    cases = {
        "plain": {k: kw[k] for k in ("hidden_states", "timestep", "img_ids")} | {"condition": condition},
        "masked_with_context": kw
        | {
            "condition": condition,
            "encoder_attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]).bool(),
            "context_attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool(),
        },
    }
    torch.save(cases, folder / "inputs.pt")
    expected = {}
    for name, case in cases.items():
        case = dict(case)
        with torch.no_grad():
            tokens, pooled = model.refine_condition(case.pop("condition"), case.get("encoder_attention_mask"))
        expected[name] = forward(model, {**case, "encoder_hidden_states": tokens, "pooled_projections": pooled})

    script = Path(__file__).with_name("context_parallel_forward.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script), str(folder)]
    result = subprocess.run(command + [str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    results = torch.load(tmp_path / "out.pt")
    for kind, result in results.items():
        assert result["world_size"] == 2
        assert "refine_condition" in result["refiner_error"]  # the refiner must see the whole condition
    for name in cases:
        torch.testing.assert_close(results["ulysses"][name], expected[name], atol=1e-5, rtol=1e-5)
        # Ring attention merges partial results by their log-sum-exp, which diffusers' only CPU backend (native SDPA)
        # does not return: on CPU it fails in diffusers, before our code.
        assert results["ring"][name] == "ValueError: Native attention does not support return_lse=True"

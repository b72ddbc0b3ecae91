"""The benchmark scripts run end to end at the tiny sizes and report what they promise (values, never times)."""

import importlib.util
from pathlib import Path

import pytest
import torch


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def end_to_end_rows(tmp_path_factory):
    bench = load("bench_end_to_end")
    return bench.main(["--tiny", "--device", "cpu", "--quiet", "--folder", str(tmp_path_factory.mktemp("bench"))])


def test_end_to_end_table_rows(end_to_end_rows):
    modes = [(row["task"], row["mode"]) for row in end_to_end_rows]
    pipeline_modes = ["exact", "baseline", "exact, first call", "exact, batched", "cache", "TaylorSeer",
                      "TaylorSeer lite", "bf16", "bf16 + cache"]  # fmt: skip
    chat_modes = ["exact", "static cache", "bf16"]
    if load("bench_end_to_end").has_torchao():
        pipeline_modes.append("bf16 + int8")
        chat_modes.append("bf16 + int8")
    assert sorted(modes) == sorted(
        [(task, mode) for task in ("text-to-image", "edit") for mode in pipeline_modes]
        + [("chat", mode) for mode in chat_modes]
    )
    for row in end_to_end_rows:
        assert row["seconds"] > 0 and row["peak_bytes"] > 0 and row["speedup"] > 0
        assert (row["tokens_per_s"] is not None) == (row["task"] == "chat")
    lines = load("bench_end_to_end").table(end_to_end_rows).splitlines()
    assert len(lines) == len(end_to_end_rows) + 2  # header and separator, then one line per row
    assert [line.split(" | ")[1] for line in lines[2:]] == [mode for _, mode in modes]


def test_end_to_end_deviations(end_to_end_rows):
    deviation = {(row["task"], row["mode"]): row["deviation"] for row in end_to_end_rows}
    for task in ("text-to-image", "edit", "chat"):
        assert deviation[task, "exact"] == 0
        assert 0 < deviation[task, "bf16"] < 0.5
    # The static cache attends over the same keys (its unused slots masked out).
    assert deviation["chat", "static cache"] < 1e-4
    for task in ("text-to-image", "edit"):
        # Nothing kept from earlier calls: the same bits.
        assert deviation[task, "exact, first call"] == 0
        # Two steps end before TaylorSeer's three computed warm-up steps: nothing is extrapolated yet.
        assert deviation[task, "TaylorSeer"] == deviation[task, "TaylorSeer lite"] == 0
        # The plain released algorithm and the batched calls differ from the pipeline by float32 rounding only.
        assert deviation[task, "baseline"] < 1e-4
        assert deviation[task, "exact, batched"] < 1e-4


def test_gpu_script_runs_on_the_cpu(tmp_path):
    results = load("bench_gpu").main(
        ["--device", "cpu", "--tiny", "--peak-tflops", "1", "--folder", str(tmp_path)]
    )
    for mode in ("eager", "compiled", "first-block cache"):
        assert results[f"s / image, {mode}"] > 0
    assert results["peak memory, plain (GiB)"] > 0
    assert "peak memory, model CPU offload (GiB)" not in results  # nothing to offload to on the CPU
    int8 = results["peak memory, int8 weights (GiB)"]
    assert int8 > 0 if load("bench_end_to_end").has_torchao() else int8 is None
    assert "peak memory, float8 weights (GiB)" not in results  # float8 weight-only needs a GPU
    assert results["denoising TFLOP / image"] > 0 and results["chat tokens/s"] > 0
    # With a peak of 1 TFLOP/s the fraction is the achieved TFLOP/s itself.
    assert results["fraction of bf16 peak (eager)"] == pytest.approx(results["denoising TFLOP/s (eager)"])


def test_pipelines_are_built_in_the_asked_dtype(tmp_path):
    # The GPU script's bf16 numbers rest on it (`from_pipe` alone would cast the shared models to float32).
    text_to_image, edit = load("bench_end_to_end").build_pipelines(tmp_path, True, "quarter", dtype=torch.bfloat16)
    for pipe in (text_to_image, edit):
        assert pipe.transformer.dtype == pipe.text_encoder.dtype == torch.bfloat16
        assert pipe.vae.dtype == torch.float32

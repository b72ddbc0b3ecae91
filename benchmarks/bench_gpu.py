"""
Headline numbers on one H100/H200 (run through `benchmarks/gpu.sh`), random weights at the released sizes:

- seconds per 1024x1024 text-to-image image, 50 steps, CFG 5, bfloat16: eager, regionally compiled
  (`compile_repeated_blocks`), and with diffusers' first-block cache;
- peak GPU memory of one image: the pipeline on the GPU, with model CPU offload, with group offload (leaf level),
  and with the transformer's and the language model's linear weights in int8 / float8 (torchao weight-only, loaded
  through diffusers' `PipelineQuantizationConfig`; where torchao is installed, float8 on CUDA only);
- chat tokens/s (greedy) and time to the first token;
- the fraction of the GPU's dense bfloat16 peak that the denoising loop reaches: FLOPs of one transformer call counted
  with `torch.utils.flop_counter`, times the steps, over the loop's time.

`--device cpu --tiny` runs every part at the tiny sizes (offload rows are skipped on the CPU: nothing to offload to;
float8 needs a GPU).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_end_to_end import (  # noqa: E402
    PROMPT,
    PeakMemory,
    build_pipelines,
    chat,
    has_torchao,
    log,
    weight_only_pipelines,
)


# Dense bfloat16 tensor-core peaks (NVIDIA data sheets, SXM parts, without sparsity), in FLOP/s.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_BF16.items() if key in name), None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class DenoiseTimer:
    """Times the pipeline's denoising loop (`denoise`) inside a call."""

    def __init__(self, pipe, device):
        self.seconds, self.device, original = 0.0, device, pipe.denoise

        def denoise(*args, **kwargs):
            sync(device)
            start = time.perf_counter()
            out = original(*args, **kwargs)
            sync(device)
            self.seconds = time.perf_counter() - start
            return out

        pipe.denoise = denoise


def step_flops(pipe, size: int) -> int:
    """FLOPs of one transformer call of a text-to-image step (both guidance branches), counted on one real call."""
    calls = []
    original = pipe.transformer.forward

    def counted(*args, **kwargs):
        with FlopCounterMode(display=False) as counter:
            out = original(*args, **kwargs)
        calls.append(counter.get_total_flops())
        return out

    pipe.transformer.forward = counted
    try:
        pipe(PROMPT, height=size, width=size, num_inference_steps=1, output_type="latent")
    finally:
        del pipe.transformer.forward
    return calls[0]


@torch.no_grad()
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--width", default="full", choices=["full", "half", "quarter"])
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024, tiny 64)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 50, tiny 2)")
    parser.add_argument("--new-tokens", type=int, default=None, help="chat tokens (default 128, tiny 8)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--folder", default=None, help="where the temporary checkpoint goes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        return measure(args, Path(folder))


def measure(args, folder: Path) -> dict:
    device = torch.device(args.device)
    size = args.size or (64 if args.tiny else 1024)
    steps = args.steps or (2 if args.tiny else 50)
    new_tokens = args.new_tokens or (8 if args.tiny else 128)
    results = {}

    pipe, _ = build_pipelines(folder, args.tiny, args.width, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)

    def image(n=steps, pipe=pipe):
        return pipe(PROMPT, height=size, width=size, num_inference_steps=n, guidance_scale=5.0,
                    generator=generator, output_type="pil")  # fmt: skip

    def peak_memory(n=2, pipe=pipe):
        with PeakMemory(device) as memory:
            image(n, pipe)
        return memory.peak

    # Weight-only quantized pipelines, each alone on the device.
    schemes = ["int8"] + (["float8"] if device.type == "cuda" else [])
    for scheme in schemes:
        key = f"peak memory, {scheme} weights (GiB)"
        if not has_torchao():
            results[key] = None
            continue
        log(f"memory: {scheme} weights ...")
        quantized, _ = weight_only_pipelines(folder / "out", scheme, torch.bfloat16)
        quantized.set_progress_bar_config(disable=True)
        quantized.to(device)
        results[key] = peak_memory(pipe=quantized) / 2**30
        del quantized
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # Memory first, while the weights can still move: the offloading modes place the weights themselves.
    if device.type == "cuda":
        log("memory: model CPU offload ...")
        pipe.enable_model_cpu_offload(device=device)
        results["peak memory, model CPU offload (GiB)"] = peak_memory() / 2**30
        pipe.remove_all_hooks()
        log("memory: group offload ...")
        pipe.enable_group_offload(onload_device=device, offload_type="leaf_level")
        results["peak memory, group offload (GiB)"] = peak_memory() / 2**30
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                from diffusers.hooks import HookRegistry

                HookRegistry.check_if_exists_or_initialize(component).remove_hook("group_offloading", recurse=True)
    pipe.to(device)
    log("memory: on the device ...")
    results["peak memory, plain (GiB)"] = peak_memory() / 2**30

    timer = DenoiseTimer(pipe, device)
    modes = ["eager"] + ([] if args.no_compile else ["compiled"]) + ["first-block cache"]
    for mode in modes:
        if mode == "compiled":
            pipe.transformer.compile_repeated_blocks()
        if mode == "first-block cache":
            from diffusers import FirstBlockCacheConfig

            pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
        log(f"{mode}: warm-up ...")
        image(2)
        log(f"{mode}: timed image ...")
        sync(device)
        start = time.perf_counter()
        image()
        sync(device)
        results[f"s / image, {mode}"] = time.perf_counter() - start
        if mode == "eager":
            loop_seconds = timer.seconds
    for module in pipe.transformer.modules():  # back to eager, uncached, for the FLOP count
        module._compiled_call_impl = None
    pipe.transformer.disable_cache()

    log("counting FLOPs of one step ...")
    flops = step_flops(pipe, size) * steps
    results["denoising TFLOP / image"] = flops / 1e12
    results["denoising TFLOP/s (eager)"] = flops / loop_seconds / 1e12
    peak = peak_flops(device, args.peak_tflops)
    results["fraction of bf16 peak (eager)"] = flops / loop_seconds / peak if peak else None

    log("chat ...")
    picture = pipe.condition_image(image(1).images[0], size, size)
    chat(pipe, picture, 2)  # warm-up
    _, first_token, rate = chat(pipe, picture, new_tokens)
    results["chat tokens/s"] = rate
    results["chat time to first token (s)"] = first_token

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, {'tiny sizes' if args.tiny else args.width + ' width'}, {size}x{size}, {steps} steps, CFG 5, bf16")
    for key, value in results.items():
        print(f"{key:40s} {'n/a' if value is None else f'{value:.4g}'}")
    return results


if __name__ == "__main__":
    main()

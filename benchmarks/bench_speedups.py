"""Speed-ups of this port over a direct transcription of the released computation, measured as ratios in one run.

1. Vision windows: our encoder attends over all windows of one size in one batched call; the released code runs one
   variable-length flash-attn call (CUDA only); without flash-attn the direct alternative is a loop over windows.
2. Token refiner: computed once per image instead of at every denoising step.
3. Guidance branches: one transformer call per step for all branches instead of one call per branch.

Random weights at reduced but realistic widths; run `python benchmarks/bench_speedups.py [--device cuda]`.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from ovis_u1_hf import OvisU1Config, OvisU1Transformer2DModel
from ovis_u1_hf.modeling.modeling_ovis_u1 import OvisU1VisionModel


def timed(fn, repeats=3):
    fn()  # warm up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def bench_vision_windows(device, dtype):
    config = OvisU1Config(vision_config=dict(num_hidden_layers=4, fullatt_block_indexes=[3])).vision_config
    config._attn_implementation = "sdpa"
    tower = OvisU1VisionModel(config).to(device, dtype).eval()
    grid = torch.tensor([[1, 64, 64]])  # an 896x896 image: 4096 patches, 64 windows of 64 patches
    pixels = torch.randn(4096, 588, device=device, dtype=dtype)
    attention = tower.layers[0].attention

    def per_window_loop(hidden, cu_seqlens, position_embeddings=None, **kwargs):
        q, k, v = attention.qkv(hidden).reshape(hidden.shape[0], 3, attention.num_heads, -1).unbind(1)
        bounds = cu_seqlens.tolist()
        outputs = [
            F.scaled_dot_product_attention(*(x[s:e].transpose(0, 1)[None] for x in (q, k, v)))[0].transpose(0, 1)
            for s, e in zip(bounds[:-1], bounds[1:])
        ]
        return attention.proj(torch.cat(outputs).reshape(hidden.shape[0], -1))

    with torch.no_grad():
        grouped = timed(lambda: tower(pixels, grid))
        originals = [layer.attention.forward for layer in tower.layers]
        for layer in tower.layers:
            layer.attention.forward = per_window_loop
        looped = timed(lambda: tower(pixels, grid))
        for layer, original in zip(tower.layers, originals):
            layer.attention.forward = original
    return looped / grouped


def decoder(device, dtype):
    torch.manual_seed(0)
    # The released depths (6 double, 12 single, 2 refiner blocks) at a third of the width.
    model = OvisU1Transformer2DModel(num_attention_heads=4, refiner_num_attention_heads=8, joint_attention_dim=1024)
    return model.to(device, dtype).eval()


def bench_refiner_once(device, dtype, steps=4):
    model = decoder(device, dtype)
    latents = torch.randn(2, 256, 16, device=device, dtype=dtype)  # two branches, a 256x256 image
    condition = torch.randn(2, 300, 1024, device=device, dtype=dtype)
    ids = torch.zeros(256, 3, device=device)
    t = torch.full((2,), 0.5, device=device, dtype=dtype)

    def every_step():
        for _ in range(steps):
            model(latents, t, ids, condition)

    def once():
        tokens, pooled = model.refine_condition(condition)
        for _ in range(steps):
            model(latents, t, ids, tokens, pooled_projections=pooled)

    with torch.no_grad():
        return timed(every_step, 1) / timed(once, 1)


def bench_batched_branches(device, dtype, steps=2):
    model = decoder(device, dtype)
    latents = torch.randn(1, 256, 16, device=device, dtype=dtype)
    lengths = [300, 260, 240]  # three edit branches of different text lengths, masked to one batch
    conditions = [torch.randn(1, n, 1024, device=device, dtype=dtype) for n in lengths]
    ids = torch.zeros(256, 3, device=device)
    t = torch.full((1,), 0.5, device=device, dtype=dtype)
    refined = [model.refine_condition(c) for c in conditions]
    padded = torch.zeros(3, max(lengths), model.inner_dim, device=device, dtype=dtype)
    mask = torch.zeros(3, max(lengths), dtype=torch.bool, device=device)
    for row, (tokens, _) in enumerate(refined):
        padded[row, -tokens.shape[1] :] = tokens[0]
        mask[row, -tokens.shape[1] :] = True
    pooled = torch.cat([p for _, p in refined])

    def separate():
        for _ in range(steps):
            for tokens, p in refined:
                model(latents, t, ids, tokens, pooled_projections=p)

    def batched():
        for _ in range(steps):
            model(latents.repeat(3, 1, 1), t.repeat(3), ids, padded, mask, pooled_projections=pooled)

    with torch.no_grad():
        return timed(separate, 1) / timed(batched, 1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    print(f"device {args.device}, dtype {dtype}")
    print(f"vision windows, per-window loop / grouped:     {bench_vision_windows(args.device, dtype):.2f}x")
    print(f"refiner every step / once:                     {bench_refiner_once(args.device, dtype):.2f}x")
    print(f"guidance branches separate / one batched call: {bench_batched_branches(args.device, dtype):.2f}x")


if __name__ == "__main__":
    main()

# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
Peak CPU memory of a few steps of the image-decoder LoRA training on a mid-size random pipeline: the released depths
(28 language-model layers, 24 vision layers, 6 double + 12 single MMDiT blocks, 2 refiner blocks) and vocabulary
(151936) at a quarter of the released widths, and the released SDXL VAE.

    python examples/generation_lora_memory.py [--steps 4] [--batch-size 1] [--image-size 512] [--gradient-checkpointing]

Peaks are of the process's resident set size: after building and saving the pipeline (`getrusage`), then from one
backward pass to the next (Linux's VmHWM, reset after each: the first interval holds loading the pipeline and caching
the conditions and latents, the others one training step each, with the language model freed), and over all of
`train` (loading, caching, training, saving the LoRA weights).
"""

import argparse
import json
import resource
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from PIL import Image
from safetensors.torch import load_file

from chat_lora_memory import mid_size_config  # the understanding model at a quarter of the released widths
from ovis_u1_hf import OvisU1Processor
from ovis_u1_hf.conversion.released_layout import VAE_CONFIG, tiny_tokenizer
from ovis_u1_hf.modeling import OvisU1ForConditionalGeneration, OvisU1ImageProcessor
from ovis_u1_hf.pipelines import OvisU1TextToImagePipeline, OvisU1Transformer2DModel
from ovis_u1_hf.training.generation_lora import main as train


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def peak_since_reset_mib() -> float:
    """The peak resident size since the last call (Linux: VmHWM, reset through /proc/self/clear_refs)."""
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return peak


def mid_size_pipeline(folder: Path) -> dict:
    processor = OvisU1Processor(OvisU1ImageProcessor(), tiny_tokenizer())
    text_encoder = OvisU1ForConditionalGeneration(mid_size_config(processor))
    heads = 12 // 4  # the released 12 heads of 128 (width 1536), a quarter of them
    transformer = OvisU1Transformer2DModel(
        num_layers=6,
        num_single_layers=12,
        attention_head_dim=128,
        num_attention_heads=heads,
        joint_attention_dim=2 * text_encoder.config.text_config.hidden_size,
        axes_dims_rope=(16, 56, 56),
        refiner_num_layers=2,
        refiner_num_attention_heads=2 * heads,
    )
    vae_config = {k: v for k, v in VAE_CONFIG.items() if not k.startswith("_")}
    vae_config.update(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096, time_shift_type="exponential",
    )  # fmt: skip
    pipe = OvisU1TextToImagePipeline(text_encoder, processor, transformer, AutoencoderKL(**vae_config), scheduler)
    pipe.save_pretrained(folder)
    return {
        "text encoder (M)": round(sum(p.numel() for p in text_encoder.parameters()) / 1e6, 1),
        "transformer (M)": round(sum(p.numel() for p in transformer.parameters()) / 1e6, 1),
        "VAE (M)": round(sum(p.numel() for p in pipe.vae.parameters()) / 1e6, 1),
    }


def run(arguments) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        sizes = mid_size_pipeline(folder / "model")
        data = folder / "data"
        data.mkdir()
        lines = []
        for index in range(arguments.batch_size * arguments.steps):
            size = (arguments.image_size + 64, arguments.image_size)
            Image.new("RGB", size, (index * 40 % 256, 90, 160)).save(data / f"{index}.png")
            lines.append(json.dumps({"file_name": f"{index}.png", "text": "a plain colour, nothing else " * 3}))
        (data / "metadata.jsonl").write_text("\n".join(lines))
        before = peak_mib()
        peak_since_reset_mib()
        during = []
        # fmt: off
        losses = train([
            "--model", str(folder / "model"), "--data", str(data), "--output-dir", str(folder / "out"),
            "--resolution", str(arguments.image_size), "--max_train_steps", str(arguments.steps),
            "--train_batch_size", str(arguments.batch_size), "--checkpointing_steps", "1000",
        ] + (["--gradient_checkpointing"] if arguments.gradient_checkpointing else []),
            step_callback=lambda record: during.append(peak_since_reset_mib()),
        )
        # fmt: on
        lora = sum(t.numel() for t in load_file(folder / "out" / "pytorch_lora_weights.safetensors").values())
        return {
            **{f"{name} parameters": value for name, value in sizes.items()},
            "LoRA parameters (M)": round(lora / 1e6, 2),
            "image tokens": (arguments.image_size // 16) ** 2,
            "losses": [round(loss, 4) for loss in losses],
            "peak RSS before training (MiB)": round(before),
            # From one backward pass to the next: the first holds the loading and caching, the others one step each.
            "peak RSS of each step (MiB)": [round(m) for m in during],
            "peak RSS of loading, caching, training and saving (MiB)": round(max(during + [peak_since_reset_mib()])),
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    torch.manual_seed(0)
    print(json.dumps(run(parser.parse_args()), indent=1))

# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
`ovis-u1 demo`: every part of the package at work in under a minute on a CPU, with no download.

It writes a small checkpoint with RANDOM weights in the released layout, converts it with the converter (both once,
into the cache), loads the result as a user loads the real model, and runs the three tasks: a streamed answer about an
image, text-to-image and an edit. The outputs are noise (the weights are random); the point is that everything runs.
"""

import importlib.metadata
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import PIL.ImageDraw
import torch
from transformers import AutoModel, AutoProcessor

from . import DEFAULT_MODEL_ID
from .cache import cache_dir
from .chat import stream_answer
from .conversion import convert
from .conversion.released_layout import build_released
from .pipelines import OvisU1EditPipeline, OvisU1TextToImagePipeline


RANDOM_WEIGHTS = (
    "The weights are RANDOM: this small checkpoint was built on this machine from random numbers, so the answer is "
    "gibberish and the images are noise. It shows that everything runs, not what Ovis-U1 can do."
)
QUESTION = "What is in this picture?"
PROMPT = "a red house under a yellow sun"
INSTRUCTION = "make the sky purple"
IMAGE_SIZE = 256  # input, generated and edited images: multiples of 32
STEPS = 20
MAX_NEW_TOKENS = 24
SEED = 0


@dataclass
class DemoResult:
    """What `run_demo` did: where its files are, whether it built the checkpoint, the answer, timings in seconds."""

    output_dir: Path
    checkpoint: Path
    checkpoint_built: bool
    answer: str
    report: Path
    images: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def demo_checkpoint(cache: Path | None = None, rebuild: bool = False) -> tuple[Path, bool]:
    """
    The demo's pipeline folder and whether this call built it. Built once per package version under
    `<cache>/demo/`: a random checkpoint in the released layout (`released/`), converted into `pipeline/`.
    """
    root = Path(cache or cache_dir()) / "demo" / _package_version()
    pipeline = root / "pipeline"
    if (pipeline / "model_index.json").is_file() and not rebuild:
        return pipeline, False
    root.mkdir(parents=True, exist_ok=True)
    released = root / "released"
    staging = Path(tempfile.mkdtemp(prefix=".released-", dir=root))
    try:
        build_released(staging, num_shards=2)
        shutil.rmtree(released, ignore_errors=True)
        staging.rename(released)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    convert(pipeline, released, force=True)
    return pipeline, True


def input_image(size: int = IMAGE_SIZE) -> PIL.Image.Image:
    """The picture the demo asks about and edits: a house under the sun, drawn here."""
    image = PIL.Image.new("RGB", (size, size), (120, 180, 235))
    draw = PIL.ImageDraw.Draw(image)
    s = size / 256
    draw.rectangle([0, 190 * s, size, size], fill=(90, 160, 70))  # grass
    draw.ellipse([180 * s, 20 * s, 230 * s, 70 * s], fill=(250, 210, 60))  # sun
    draw.rectangle([70 * s, 120 * s, 170 * s, 200 * s], fill=(200, 60, 50))  # walls
    draw.polygon([(60 * s, 122 * s), (120 * s, 70 * s), (180 * s, 122 * s)], fill=(110, 60, 40))  # roof
    draw.rectangle([108 * s, 155 * s, 132 * s, 200 * s], fill=(80, 50, 30))  # door
    draw.rectangle([80 * s, 135 * s, 100 * s, 152 * s], fill=(230, 240, 250))  # window
    return image


def run_demo(output_dir="ovis-u1-demo", cache: Path | None = None, rebuild: bool = False, out=None) -> DemoResult:
    """
    Runs the demo on the CPU and writes `input.png`, `text-to-image.png`, `edited.png` and `report.md` into
    `output_dir`; `out` (default stdout) receives the account, the answer streamed. Nothing reaches the network.
    """
    out = out or sys.stdout

    def say(text: str = "", end: str = "\n") -> None:
        print(text, end=end, file=out, flush=True)

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    timings = {}
    say(f"Ovis-U1 demo. {RANDOM_WEIGHTS}\n")

    start = time.perf_counter()
    checkpoint, built = demo_checkpoint(cache, rebuild)
    timings["checkpoint"] = time.perf_counter() - start
    how = "built and converted" if built else "found in the cache"
    say(f"Checkpoint ({how}, {timings['checkpoint']:.1f} s): {checkpoint}")

    # Loaded as the README shows: the understanding half from its subfolders, the pipelines around it.
    start = time.perf_counter()
    model = AutoModel.from_pretrained(checkpoint, subfolder="text_encoder", dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(checkpoint, subfolder="processor")
    pipe = OvisU1TextToImagePipeline.from_pretrained(checkpoint, text_encoder=model, processor=processor)
    edit_pipe = OvisU1EditPipeline.from_pipe(pipe)
    timings["load"] = time.perf_counter() - start
    say(f"Loaded in {timings['load']:.1f} s.\n")

    picture = input_image()
    images = {"input": output / "input.png"}
    picture.save(images["input"])

    say(f"1. Chat. Q: {QUESTION} (about {images['input']})\n   A: ", end="")
    start = time.perf_counter()
    answer = ""
    for text in stream_answer(model, processor, QUESTION, [picture], max_new_tokens=MAX_NEW_TOKENS):
        answer += text
        say(text, end="")
    timings["chat"] = time.perf_counter() - start
    say(f"\n   ({timings['chat']:.1f} s)\n")

    say(f"2. Text to image: {PROMPT!r}, {IMAGE_SIZE}x{IMAGE_SIZE}, {STEPS} steps")
    start = time.perf_counter()
    generated = pipe(
        PROMPT,
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(SEED),
    ).images[0]
    timings["text-to-image"] = time.perf_counter() - start
    images["text-to-image"] = output / "text-to-image.png"
    generated.save(images["text-to-image"])
    say(f"   -> {images['text-to-image']} ({timings['text-to-image']:.1f} s)\n")

    say(f"3. Edit {images['input']}: {INSTRUCTION!r}, {STEPS} steps")
    start = time.perf_counter()
    edited = edit_pipe(
        picture, INSTRUCTION, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(SEED)
    ).images[0]
    timings["edit"] = time.perf_counter() - start
    images["edited"] = output / "edited.png"
    edited.save(images["edited"])
    say(f"   -> {images['edited']} ({timings['edit']:.1f} s)\n")

    result = DemoResult(output, checkpoint, built, answer, output / "report.md", images, timings)
    result.report.write_text(_report(result, picture, generated, edited), encoding="utf-8")
    say(f"Report: {result.report}")
    say(f"Remember: {RANDOM_WEIGHTS}")
    say(f"With the real model ({DEFAULT_MODEL_ID}, downloaded and converted on first use):")
    for command in _next_commands(images["input"]):
        say(f"  {command}")
    return result


def _report(result: DemoResult, picture, generated, edited) -> str:
    t = result.timings

    def size(image) -> str:
        return f"{image.width}x{image.height}"

    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("torch", "transformers", "diffusers")
    )
    lines = [
        "# ovis-u1 demo report",
        "",
        f"**{RANDOM_WEIGHTS}**",
        "",
        f"- Package: ovis-u1-hf {_package_version()}; {versions}; Python {platform.python_version()}; CPU, "
        f"{torch.get_num_threads()} threads.",
        f"- Checkpoint: `{result.checkpoint}`, "
        + (
            f"built now ({t['checkpoint']:.1f} s): a random checkpoint in the released layout "
            f"(`{result.checkpoint.parent / 'released'}`), converted by `ovis_u1_hf.conversion.convert`."
            if result.checkpoint_built
            else f"reused from the cache ({t['checkpoint']:.1f} s); `ovis-u1 demo --rebuild` builds it anew."
        ),
        "- Loaded with `AutoModel` / `AutoProcessor` (subfolders `text_encoder`, `processor`), "
        f"`OvisU1TextToImagePipeline.from_pretrained` and `OvisU1EditPipeline.from_pipe` in {t['load']:.1f} s.",
        "",
        "| task | input | output | size | time |",
        "| --- | --- | --- | --- | --- |",
        f"| chat (streamed, greedy, at most {MAX_NEW_TOKENS} tokens) | {QUESTION!r} about `input.png` "
        f"| {result.answer.strip()!r} | {len(result.answer)} characters | {t['chat']:.1f} s |",
        f"| text to image ({STEPS} steps, seed {SEED}) | {PROMPT!r} | `{result.images['text-to-image']}` "
        f"| {size(generated)} | {t['text-to-image']:.1f} s |",
        f"| edit ({STEPS} steps, seed {SEED}) | `input.png` ({size(picture)}), {INSTRUCTION!r} "
        f"| `{result.images['edited']}` | {size(edited)} | {t['edit']:.1f} s |",
        "",
        f"With the real model ({DEFAULT_MODEL_ID}, downloaded and converted on first use):",
        "",
        "```bash",
        *_next_commands(result.images["input"]),
        "```",
        "",
    ]
    return "\n".join(lines)


def _next_commands(image: Path) -> list[str]:
    return [
        f'ovis-u1 chat "{QUESTION}" --image {image}',
        f'ovis-u1 generate "{PROMPT}" --output house.png',
        f'ovis-u1 edit {image} "{INSTRUCTION}" --output edited.png',
    ]


def _package_version() -> str:
    try:
        return importlib.metadata.version("ovis-u1-hf")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


__all__ = ["DemoResult", "demo_checkpoint", "input_image", "run_demo"]

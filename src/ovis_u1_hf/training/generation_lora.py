# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
LoRA fine-tuning of the Ovis-U1 image decoder (the MMDiT of `OvisU1Transformer2DModel`) for text-to-image or editing,
in the style of diffusers' DreamBooth LoRA scripts: accelerate for devices, mixed precision and gradient accumulation,
PEFT LoRA through `transformer.add_adapter`, diffusers' timestep-sampling and loss-weighting helpers.

    python -m ovis_u1_hf.training.generation_lora --model ovis-u1-3b --data my-images --output-dir my-lora \
        --resolution 1024 --train_batch_size 1 --gradient_accumulation_steps 4 --learning_rate 1e-4 \
        --max_train_steps 1000 --mixed_precision bf16

The data folder holds the images and a `metadata.jsonl` (see `generation_data`). Before training, the frozen language
model computes each example's condition once, as the pipelines do, and the VAE the latent distributions of the
images; then the language model is freed. The loss is the flow-matching loss of the released sampler: with packed,
scaled latents `x0`, noise `n` and a noise level `sigma` (drawn as the inference schedule spreads them),
`x_t = (1 - sigma) * x0 + sigma * n`, and the transformer, given `x_t` and the time `sigma`, predicts the velocity
`n - x0` (mean squared error). `OUT/pytorch_lora_weights.safetensors` loads with `pipe.load_lora_weights(OUT)`.
"""

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import PIL.Image
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from diffusers.training_utils import (
    cast_training_params,
    compute_density_for_timestep_sampling,
    compute_loss_weighting_for_sd3,
    free_memory,
    generate_aspect_ratio_buckets,
    parse_buckets_string,
)
from diffusers.utils.torch_utils import randn_tensor
from peft import LoraConfig, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..cache import PIPELINE, ModelUnavailableError, resolve_model
from ..inputs import InputError, check_writable_folder, open_image, save_image_atomically
from ..modeling.image_processing_ovis_u1 import convert_to_rgb, to_pil_image
from ..pipelines import MAX_IMAGE_SIZE, OvisU1EditPipeline, OvisU1TextToImagePipeline
from .generation_data import (
    EDIT,
    METADATA_FILE,
    SIZE_MULTIPLE,
    TEXT_TO_IMAGE,
    DataError,
    batches_per_epoch,
    check_buckets,
    load_generation_metadata,
    micro_batch_stream,
    nearest_bucket,
    step_generator,
)


logger = get_logger(__name__)

# Every linear layer of the MMDiT blocks except their adaLN modulations: the double blocks' joint and image-only
# attention and both MLPs, the single blocks' attention, MLP input and output.
BLOCK_LINEARS = (
    "to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out,"
    "ff.net.0.proj,ff.net.2,ff_context.net.0.proj,ff_context.net.2,proj_mlp,proj_out"
)
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINING_STATE_FILE = "training_state.json"
WEIGHTING_SCHEMES = ("none", "uniform", "logit_normal", "mode", "sigma_sqrt", "cosmap")


# ---------------------------------------------------------------------------------------------- arguments ---------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ovis_u1_hf.training.generation_lora",
        description="LoRA fine-tuning of the Ovis-U1 image decoder for text-to-image or editing.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("model and data")
    data.add_argument("--model", required=True,
                      help="A pipeline folder or Hub id, as `ovis-u1 generate` takes it: the released checkpoint "
                           "(AIDC-AI/Ovis-U1-3B) is converted once into the cache.")
    data.add_argument("--data", required=True, help="Image folder with a metadata.jsonl (see the README).")
    data.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True,
                      help="Where the LoRA weights, checkpoints and validation images go.")
    data.add_argument("--task", choices=(TEXT_TO_IMAGE, EDIT), default=None,
                      help="Default: edit when metadata.jsonl has `source_file`, else text-to-image.")
    data.add_argument("--caption_column", default="text", help="Key of the caption / instruction in metadata.jsonl.")
    data.add_argument("--resolution", type=int, default=1024,
                      help="Text-to-image: images are fitted (scaled, centre-cropped) to this square size, or with "
                           "--aspect_ratio_buckets to buckets of about this many pixels squared. A multiple of 32.")
    data.add_argument("--aspect_ratio_buckets", action="store_true",
                      help="Text-to-image: fit each image to the bucket of nearest aspect ratio (diffusers' "
                           "generate_aspect_ratio_buckets at --resolution, sides multiples of 32).")
    data.add_argument("--buckets", default=None,
                      help='Text-to-image: explicit buckets "height,width;height,width;..." (multiples of 32).')
    data.add_argument("--random_flip", action="store_true",
                      help="Text-to-image: flip images horizontally at random (then latents are encoded every step).")
    data.add_argument("--cache_dir", default=None,
                      help="Keep the cached conditions and latents as files in this folder instead of in memory.")
    data.add_argument("--encode_batch_size", type=int, default=8, help="Examples per language-model call when caching.")

    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--lora_r", "--rank", dest="lora_r", type=int, default=16, help="LoRA rank.")
    lora.add_argument("--lora_alpha", type=int, default=None, help="LoRA scaling numerator (default: the rank).")
    lora.add_argument("--lora_dropout", type=float, default=0.0)
    lora.add_argument("--target_modules", default=BLOCK_LINEARS,
                      help="Comma-separated names of the linear layers of the MMDiT blocks that get LoRA.")
    lora.add_argument("--train_refiner", action="store_true",
                      help="Also put LoRA on the token refiner's layers of those names (frozen otherwise).")

    train = parser.add_argument_group("training")
    train.add_argument("--train_batch_size", type=int, default=1, help="Examples per device and micro-batch.")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--max_train_steps", type=int, default=None, help="Optimizer steps; overrides the epochs.")
    train.add_argument("--num_train_epochs", type=int, default=1)
    train.add_argument("--learning_rate", type=float, default=1e-4)
    train.add_argument("--lr_scheduler", default="constant",
                       help="diffusers' get_scheduler: constant, constant_with_warmup, linear, cosine, ...")
    train.add_argument("--lr_warmup_steps", type=int, default=0)
    train.add_argument("--adam_beta1", type=float, default=0.9)
    train.add_argument("--adam_beta2", type=float, default=0.999)
    train.add_argument("--adam_weight_decay", type=float, default=1e-4)
    train.add_argument("--adam_epsilon", type=float, default=1e-8)
    train.add_argument("--max_grad_norm", type=float, default=1.0)
    train.add_argument("--mixed_precision", choices=("no", "bf16", "fp16"), default=None,
                       help="Default: accelerate's configuration (no mixed precision without one). The frozen "
                            "weights are stored in this dtype; the LoRA weights stay in float32.")
    train.add_argument("--gradient_checkpointing", action="store_true",
                       help="Recompute the transformer's block activations in the backward pass to save memory.")
    train.add_argument("--seed", type=int, default=42,
                       help="Seeds the LoRA initialisation, the batch order and every random draw of the steps.")
    train.add_argument("--weighting_scheme", choices=WEIGHTING_SCHEMES, default="none",
                       help="How noise levels are drawn before the inference timestep shift (diffusers' "
                            "compute_density_for_timestep_sampling: logit_normal, mode; else uniform) and how the "
                            "loss is weighted (compute_loss_weighting_for_sd3: sigma_sqrt, cosmap).")
    train.add_argument("--logit_mean", type=float, default=0.0)
    train.add_argument("--logit_std", type=float, default=1.0)
    train.add_argument("--mode_scale", type=float, default=1.29)
    train.add_argument("--latent_sampling", choices=("sample", "mode"), default="sample",
                       help="Latents of the images: a sample of the VAE's posterior (as the edit pipeline encodes "
                            "its input) or its mode.")
    train.add_argument("--condition_dropout_prob", type=float, default=0.0,
                       help="Text-to-image: probability that an example trains the unconditional branch (\"Generate "
                            "an image.\"). Edit: the probability of dropping the instruction, and again that of "
                            "dropping both the instruction and the image, as the guidance branches see them.")

    checkpoints = parser.add_argument_group("checkpoints and validation")
    checkpoints.add_argument("--checkpointing_steps", type=int, default=500,
                             help="Save the training state into OUT/checkpoint-N every N optimizer steps.")
    checkpoints.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep this many at most.")
    checkpoints.add_argument("--resume_from_checkpoint", default=None,
                             help='"latest" (the newest OUT/checkpoint-N, if any) or a checkpoint folder.')
    checkpoints.add_argument("--validation_prompt", default=None, help="Caption (or instruction) of validation images.")
    checkpoints.add_argument("--validation_image", default=None, help="Edit: the image the validation edits.")
    checkpoints.add_argument("--validation_steps", type=int, default=100,
                             help="Write validation images into OUT/validation/ every N steps and at the end.")
    checkpoints.add_argument("--num_validation_images", type=int, default=1)
    checkpoints.add_argument("--validation_inference_steps", type=int, default=50)
    checkpoints.add_argument("--validation_guidance_scale", type=float, default=None,
                             help="Default: the pipeline's (5.0 text-to-image, 6.0 edit).")
    checkpoints.add_argument("--validation_image_guidance_scale", type=float, default=1.5, help="Edit only.")
    checkpoints.add_argument("--report_to", default="none",
                             help='accelerate trackers for the loss ("tensorboard", "wandb", "all"), or "none".')
    return parser.parse_args(argv)


def check_args(args) -> None:
    """Everything the arguments alone can get wrong, before any file is read."""
    positive = ["train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "lora_r", "checkpointing_steps",
                "validation_steps", "num_validation_images", "validation_inference_steps", "encode_batch_size"]  # fmt: skip
    for name in positive + ["max_train_steps", "checkpoints_total_limit", "lora_alpha"]:
        value = getattr(args, name)
        if (value is not None or name in positive) and value < 1:
            raise InputError(f"--{name} must be a positive integer, got {value}.")
    for name in ("learning_rate", "logit_std"):
        if not math.isfinite(getattr(args, name)) or getattr(args, name) <= 0:
            raise InputError(f"--{name} must be a positive number, got {getattr(args, name)}.")
    if not 0 <= args.lora_dropout < 1:
        raise InputError(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}.")
    if not SIZE_MULTIPLE <= args.resolution <= MAX_IMAGE_SIZE or args.resolution % SIZE_MULTIPLE:
        raise InputError(
            f"--resolution must be a multiple of {SIZE_MULTIPLE} between {SIZE_MULTIPLE} and {MAX_IMAGE_SIZE}, "
            f"got {args.resolution}."
        )
    if not 0 <= args.condition_dropout_prob <= 1:
        raise InputError(f"--condition_dropout_prob must be in [0, 1], got {args.condition_dropout_prob}.")
    if args.buckets is not None:
        try:
            buckets = parse_buckets_string(args.buckets)
        except ValueError as error:
            raise InputError(f"--buckets: {error}") from None
        check_buckets(buckets)
        if any(max(bucket) > MAX_IMAGE_SIZE for bucket in buckets):
            raise InputError(f"--buckets: sides must be at most {MAX_IMAGE_SIZE}.")


def check_task_args(args, task: str) -> None:
    """The options that only one task takes."""
    if task == EDIT:
        for name in ("aspect_ratio_buckets", "random_flip", "buckets"):
            if getattr(args, name):
                raise InputError(
                    f"--{name} is for text-to-image data: edits are trained at the edit pipeline's size of their "
                    "source image, and flipping would change what the language model saw."
                )
        if args.condition_dropout_prob > 0.5:
            raise InputError("--condition_dropout_prob is at most 0.5 for edits (it is drawn twice: text, then both).")
        if (args.validation_prompt is None) != (args.validation_image is None):
            raise InputError("Edit validation needs both --validation_prompt and --validation_image.")
        if args.validation_image is not None:
            open_image(args.validation_image, f"--validation_image {args.validation_image}")
    elif args.validation_image is not None:
        raise InputError("--validation_image is for edit data; text-to-image validation takes --validation_prompt.")
    if args.validation_prompt is not None and not args.validation_prompt.strip():
        raise InputError("--validation_prompt is empty: write a prompt or leave the option out.")


def lora_config(args) -> LoraConfig:
    names = [name.strip() for name in args.target_modules.split(",") if name.strip()]
    if not names:
        raise InputError("--target_modules names no layer.")
    blocks = "transformer_blocks|single_transformer_blocks" + ("|refiner\\.blocks" if args.train_refiner else "")
    alternatives = "|".join(re.escape(name) for name in names)
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha or args.lora_r,
        lora_dropout=args.lora_dropout,
        init_lora_weights="gaussian",
        # A regex rather than bare names: the final `proj_out` and the refiner have layers named like the blocks',
        # and they stay frozen unless asked for.
        target_modules=rf"(?:{blocks})\.\d+\.(?:[\w.]*\.)?(?:{alternatives})",
    )


# ---------------------------------------------------------------------------------------------- cache -------------


class ExampleCache:
    """Per-example tensors (conditions, latent distributions) and tensors shared by many examples (the unconditional
    conditions of a size), in memory or, with `folder`, as safetensors files written under a temporary name and
    renamed."""

    def __init__(self, folder: str | None = None):
        self.folder = Path(folder) if folder else None
        self.memory: dict[str, dict[str, torch.Tensor]] = {}
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def put(self, key: int | str, tensors: dict[str, torch.Tensor]) -> None:
        tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
        if self.folder is None:
            self.memory[str(key)] = tensors
            return
        path = self.path(key)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=self.folder)
        os.close(handle)
        try:
            save_file(tensors, temporary)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise

    def __getitem__(self, key: int | str) -> dict[str, torch.Tensor]:
        if self.folder is None:
            return self.memory[str(key)]
        if isinstance(key, int):
            return load_file(self.path(key))
        if key not in self.memory:  # shared tensors are few and small: read once
            self.memory[key] = load_file(self.path(key))
        return self.memory[key]

    def path(self, key: int | str) -> Path:
        return self.folder / (f"{key:08d}.safetensors" if isinstance(key, int) else f"{key}.safetensors")


def load_rgb(path: Path, line: str) -> PIL.Image.Image:
    """An image file decoded, upright and in RGB, as the pipelines convert their inputs; errors name the example."""
    try:
        image = open_image(path, str(path))
    except InputError as error:
        raise DataError(f"{line}: {error}") from None
    return convert_to_rgb(to_pil_image(image))


@torch.no_grad()
def latent_distributions(pipe, images: list[PIL.Image.Image]) -> torch.Tensor:
    """The VAE posterior parameters `(batch, 2 * latent_channels, h, w)` (mean, log-variance) of images of one size,
    encoded as the edit pipeline encodes its input (`image_posterior`). One image at a time: the VAE's activations at
    a megapixel take gigabytes each."""
    return torch.cat([pipe.image_posterior(image, pipe.vae.device).float().cpu() for image in images])


def scaled_latents(pipe, parameters: torch.Tensor, sampling: str, generator: torch.Generator | None) -> torch.Tensor:
    """Packed latents `(batch, tokens, 4 * latent_channels)` from posterior parameters: a sample (drawn with
    `generator` on the CPU) or the mode, shifted and scaled as the pipelines' decoding inverts."""
    distribution = DiagonalGaussianDistribution(parameters.float())
    latents = distribution.sample(generator) if sampling == "sample" else distribution.mode()
    return pipe.pack_vae_latents(latents)


@dataclass
class TrainingData:
    task: str
    examples: list
    sizes: list[tuple[int, int]]  # (height, width) each example trains at
    cache: ExampleCache
    latents_cached: bool


def training_sizes(args, pipe, task: str, examples) -> list[tuple[int, int]]:
    """`(height, width)` each example trains at: the edit pipeline's output size of the source, or the square
    `--resolution`, or the nearest bucket."""
    if task == EDIT:
        return [pipe.output_size(SimpleNamespace(width=e.size[0], height=e.size[1])) for e in examples]
    if args.buckets:
        buckets = check_buckets(parse_buckets_string(args.buckets))
    elif args.aspect_ratio_buckets:
        buckets = generate_aspect_ratio_buckets(args.resolution, divisibility=SIZE_MULTIPLE)
        buckets = [bucket for bucket in buckets if max(bucket) <= MAX_IMAGE_SIZE]
    else:
        return [(args.resolution, args.resolution)] * len(examples)
    return [nearest_bucket(example.size, buckets) for example in examples]


def line_of(args, example) -> str:
    return f"{Path(args.data) / METADATA_FILE}:{example.line}"


@torch.no_grad()
def cache_examples(args, pipe, task: str, examples, accelerator) -> TrainingData:
    """
    Runs the frozen language model and VAE over the dataset once: each example's condition exactly as the pipeline
    computes its conditional branch (with condition dropout, also the unconditional ones), and the VAE posterior of
    each target (and edit source). With several processes and `--cache_dir`, each process encodes a share into the
    folder; in memory, each encodes everything.
    """
    sizes = training_sizes(args, pipe, task, examples)
    cache = ExampleCache(args.cache_dir)
    latents_cached = not args.random_flip
    dropout = args.condition_dropout_prob > 0
    device = accelerator.device
    fit = pipe.processor.image_processor.fit_image
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(size, []).append(index)
    chunks = [
        (size, members[i : i + args.encode_batch_size])
        for size, members in sorted(groups.items())
        for i in range(0, len(members), args.encode_batch_size)
    ]
    if args.cache_dir is not None:
        chunks = chunks[accelerator.process_index :: accelerator.num_processes]
    for size, indices in tqdm(chunks, desc="Caching conditions and latents", disable=not accelerator.is_local_main_process):
        height, width = size
        first_of_size = indices[0] == groups[size][0]
        texts = [examples[i].text for i in indices]
        lines = [line_of(args, examples[i]) for i in indices]
        entries = [{} for _ in indices]
        if task == TEXT_TO_IMAGE:
            unconditional = dropout and first_of_size
            condition, mask, negative, negative_mask = pipe.encode_prompt(
                texts, height, width, do_classifier_free_guidance=unconditional, device=device
            )
            if unconditional:
                cache.put(f"unconditional-{height}x{width}", {"condition": negative[0][negative_mask[0]]})
            if latents_cached:
                targets = [fit(load_rgb(examples[i].image, line), width, height) for i, line in zip(indices, lines)]
                for entry, parameters in zip(entries, latent_distributions(pipe, targets)):
                    entry["latents"] = parameters
        else:
            sources = [load_rgb(examples[i].source, line) for i, line in zip(indices, lines)]
            # As the edit pipeline: the source resized to the output size is what the language model sees and, as
            # context tokens, what the transformer sees.
            sources = [source.resize((width, height), resample=PIL.Image.Resampling.BICUBIC) for source in sources]
            condition, mask, negative, negative_mask = pipe.encode_prompt(texts, sources, device=device)
            count = len(indices)
            if dropout:
                for entry, row, row_mask in zip(entries, negative[:count], negative_mask[:count]):
                    entry["no_text"] = row[row_mask]
                if first_of_size:
                    cache.put(f"no_both-{height}x{width}", {"condition": negative[count][negative_mask[count]]})
            contexts = latent_distributions(pipe, [fit(source, width, height) for source in sources])
            targets = [fit(load_rgb(examples[i].image, line), width, height) for i, line in zip(indices, lines)]
            for entry, context, target in zip(entries, contexts, latent_distributions(pipe, targets)):
                entry["context"], entry["latents"] = context, target
        for entry, index, row, row_mask in zip(entries, indices, condition, mask):
            entry["condition"] = row[row_mask]
            cache.put(index, entry)
    accelerator.wait_for_everyone()
    return TrainingData(task, examples, sizes, cache, latents_cached)


@torch.no_grad()
def validation_conditions(args, pipe, task: str) -> dict:
    """The validation call's conditions, computed while the language model is loaded."""
    if args.validation_prompt is None:
        return {}
    device = pipe._execution_device
    if task == TEXT_TO_IMAGE:
        guidance = 5.0 if args.validation_guidance_scale is None else args.validation_guidance_scale
        height = width = args.resolution
        embeds = pipe.encode_prompt(
            args.validation_prompt, height, width, do_classifier_free_guidance=guidance != 1, device=device
        )
        call = dict(height=height, width=width, guidance_scale=guidance)
    else:
        image = open_image(args.validation_image, f"--validation_image {args.validation_image}")
        embeds = pipe.encode_prompt(args.validation_prompt, image, device=device)
        call = dict(
            image=image,
            guidance_scale=6.0 if args.validation_guidance_scale is None else args.validation_guidance_scale,
            image_guidance_scale=args.validation_image_guidance_scale,
        )
    names = ("prompt_embeds", "prompt_embeds_mask", "negative_prompt_embeds", "negative_prompt_embeds_mask")
    call.update({name: tensor for name, tensor in zip(names, embeds) if tensor is not None})
    return call


# ---------------------------------------------------------------------------------------------- the loss ----------


@dataclass
class StepRecord:
    """What one micro-batch trained on, handed to `step_callback` after its backward pass (gradients in place)."""

    step: int  # optimizer steps done before this micro-batch
    micro_batch: int  # its index in the run's stream of micro-batches
    indices: list[int]  # its examples (lines of metadata.jsonl in order, from 0)
    loss: float
    u: torch.Tensor  # (batch,) draws of the timestep density, before the timestep shift
    sigmas: torch.Tensor  # (batch,) noise levels
    timesteps: torch.Tensor  # (batch,) what the transformer got as `timestep`
    latents: torch.Tensor  # (batch, tokens, channels) packed, scaled target latents x0
    noise: torch.Tensor  # (batch, tokens, channels)
    context: torch.Tensor | None  # edit: packed, scaled latents of the source
    dropped: torch.Tensor | None  # condition dropout: 0 kept, 1 unconditional (edit: no text), 2 edit: no both
    model: torch.nn.Module


def flow_matching_loss(
    args,
    pipe,
    data: TrainingData,
    model: torch.nn.Module,
    unwrapped: torch.nn.Module,
    indices: list[int],
    generator: torch.Generator,
    scheduler,
    accelerator: Accelerator,
    weight_dtype: torch.dtype,
) -> tuple[torch.Tensor, dict]:
    """
    The loss of one micro-batch (examples of one size) and what it drew. The random draws come from `generator`, in
    this order: the noise levels, the flips (with --random_flip), the latent samples of the targets and (edit) the
    sources, the noise, the condition dropout.
    """
    device = accelerator.device
    batch_size = len(indices)
    height, width = data.sizes[indices[0]]
    grid_h, grid_w = pipe.token_grid(height, width)
    entries = [data.cache[i] for i in indices]

    # Noise levels: u from diffusers' density (uniform by default), then the inference schedule's shift for this many
    # noise tokens, through the pipeline's own `timesteps` (which sets `scheduler`).
    u = compute_density_for_timestep_sampling(
        args.weighting_scheme, batch_size, args.logit_mean, args.logit_std, args.mode_scale, generator=generator
    )
    timesteps = pipe.timesteps(batch_size, grid_h * grid_w, "cpu", scheduler=scheduler, sigmas=u.tolist())
    sigmas = scheduler.sigmas[:batch_size].clone()

    if data.latents_cached:
        parameters = torch.cat([entry["latents"][None] for entry in entries])
    else:
        flips = (torch.rand(batch_size, generator=generator) < 0.5).tolist()
        image_processor = pipe.processor.image_processor
        targets = []
        for index, flip in zip(indices, flips):
            example = data.examples[index]
            target = image_processor.fit_image(load_rgb(example.image, line_of(args, example)), width, height)
            targets.append(target.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT) if flip else target)
        parameters = latent_distributions(pipe, targets)
    latents = scaled_latents(pipe, parameters, args.latent_sampling, generator)
    context = None
    if data.task == EDIT:
        context = torch.cat([entry["context"][None] for entry in entries])
        context = scaled_latents(pipe, context, args.latent_sampling, generator)
    noise = randn_tensor(latents.shape, generator=generator, dtype=torch.float32)

    conditions = [entry["condition"] for entry in entries]
    dropped = None
    if args.condition_dropout_prob > 0:
        draw = torch.rand(batch_size, generator=generator)
        p = args.condition_dropout_prob
        dropped = (draw < p).long() if data.task == TEXT_TO_IMAGE else (draw < p).long() + (draw < 2 * p).long()
        for row, kind in enumerate(dropped.tolist()):
            if data.task == TEXT_TO_IMAGE and kind:
                conditions[row] = data.cache[f"unconditional-{height}x{width}"]["condition"]
            elif kind == 1:
                conditions[row] = entries[row]["no_text"]
            elif kind == 2:
                conditions[row] = data.cache[f"no_both-{height}x{width}"]["condition"]

    sigma = sigmas[:, None, None]
    noisy = ((1.0 - sigma) * latents + sigma * noise).to(device, weight_dtype)
    # As the pipelines' denoising loop: the scheduler's timestep / 1000, in the model dtype.
    timestep = (timesteps / 1000).to(weight_dtype)
    condition, mask = pipe.stack_conditions([(c[None], None) for c in conditions], device)
    condition = condition.to(weight_dtype)
    inputs = dict(
        hidden_states=noisy,
        timestep=timestep.to(device),
        img_ids=pipe.latent_ids(grid_h, grid_w, 0, device),
        encoder_hidden_states=condition,
        encoder_attention_mask=mask,
        return_dict=False,
    )
    if context is not None:
        context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=device)
        if dropped is not None:
            context_mask[dropped.to(device) == 2] = False  # no both: the context tokens are masked out entirely
        inputs.update(
            context_hidden_states=context.to(device, weight_dtype),
            context_ids=pipe.latent_ids(grid_h, grid_w, 1, device),
            context_attention_mask=context_mask,
        )
    with accelerator.autocast():
        if not args.train_refiner:
            # The frozen refiner does not depend on the timestep: no activations of it need keeping.
            with torch.no_grad():
                tokens, pooled = unwrapped.refine_condition(condition, mask)
            inputs.update(encoder_hidden_states=tokens, pooled_projections=pooled)
        prediction = model(**inputs)[0]

    target = (noise - latents).to(device)
    weighting = compute_loss_weighting_for_sd3(args.weighting_scheme, sigmas).to(device)
    loss = (weighting[:, None, None] * (prediction.float() - target) ** 2).reshape(batch_size, -1).mean(1)
    drawn = dict(
        u=u, sigmas=sigmas, timesteps=timestep, latents=latents, noise=noise, context=context, dropped=dropped
    )
    return loss.mean(), drawn


# ---------------------------------------------------------------------------------------------- checkpoints -------


def checkpoints(output_dir: Path) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, oldest step first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


def resume_path(args) -> Path | None:
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        found = checkpoints(Path(args.output_dir))
        return found[-1] if found else None
    path = Path(args.resume_from_checkpoint)
    if not path.exists() and (Path(args.output_dir) / path).is_dir():
        path = Path(args.output_dir) / path  # a checkpoint's name, as diffusers' scripts take it
    if not (path / TRAINING_STATE_FILE).is_file():
        raise InputError(f"--resume_from_checkpoint {path} is not a checkpoint folder (no {TRAINING_STATE_FILE}).")
    return path


def save_lora(pipeline_class, folder: Path, model, config: LoraConfig) -> None:
    """`folder/pytorch_lora_weights.safetensors`, written under a temporary name and renamed."""
    staging = Path(tempfile.mkdtemp(prefix=".lora-", dir=folder))
    try:
        pipeline_class.save_lora_weights(
            staging,
            transformer_lora_layers=get_peft_model_state_dict(model),
            transformer_lora_adapter_metadata=config.to_dict(),
            weight_name=LORA_WEIGHT_NAME,
        )
        os.replace(staging / LORA_WEIGHT_NAME, folder / LORA_WEIGHT_NAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_checkpoint(accelerator, output_dir: Path, step: int, total_limit: int | None) -> None:
    """accelerate's state (LoRA weights through the save hook, optimizer, scheduler, random states) into a staging
    folder renamed to `checkpoint-N` once complete; then the oldest beyond `total_limit` are removed."""
    final = output_dir / f"checkpoint-{step}"
    staging = output_dir / f".checkpoint-{step}.saving"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        (staging / TRAINING_STATE_FILE).write_text(json.dumps({"global_step": step}) + "\n")
        replaced = output_dir / f".checkpoint-{step}.replaced"
        if final.exists():  # a rerun saving the same step: the old one goes only once the new one is in place
            shutil.rmtree(replaced, ignore_errors=True)
            os.rename(final, replaced)
        os.rename(staging, final)
        shutil.rmtree(replaced, ignore_errors=True)
        found = checkpoints(output_dir)
        for old in found[: max(0, len(found) - total_limit)] if total_limit else []:
            shutil.rmtree(old)
        logger.info(f"Saved state to {final}")
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------- validation --------


@torch.no_grad()
def log_validation(args, pipe, call: dict, model, accelerator, step: int) -> list[PIL.Image.Image]:
    """Validation images with the LoRA being trained, written to OUT/validation/step-N-I.png."""
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    training = model.training
    model.eval()
    images = []
    try:
        with accelerator.autocast():
            for i in range(args.num_validation_images):
                generator = torch.Generator().manual_seed(args.seed + i)
                image = pipe(
                    num_inference_steps=args.validation_inference_steps, generator=generator, **call
                ).images[0]
                save_image_atomically(image, folder / f"step-{step:06d}-{i}.png")
                images.append(image)
    finally:
        model.train(training)
    return images


# ---------------------------------------------------------------------------------------------- training ----------


def load_pipeline(path: str, task: str, dtype: torch.dtype):
    pipeline_class = OvisU1EditPipeline if task == EDIT else OvisU1TextToImagePipeline
    pipe = pipeline_class.from_pretrained(path, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    for component in (pipe.text_encoder, pipe.vae, pipe.transformer):
        component.requires_grad_(False)
    return pipe


def train(args, step_callback: Callable[[StepRecord], None] | None = None) -> list[float]:
    """
    Runs the training that `args` (from [`parse_args`]) describe and returns the loss of each optimizer step it ran
    (mean over its micro-batches and processes). `step_callback`, if given, sees every micro-batch (see
    [`StepRecord`]).
    """
    check_args(args)
    task, examples = load_generation_metadata(args.data, args.task, args.caption_column)
    check_task_args(args, task)
    output_dir = Path(args.output_dir)
    check_writable_folder(output_dir, "--output-dir")
    resume = resume_path(args)

    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    # 1. The frozen models: conditions and latents computed once, then the language model is let go. As `ovis-u1
    # generate`, --model may name the released checkpoint, converted once into the cache.
    with accelerator.main_process_first():
        resolved = resolve_model(args.model)
    if resolved.layout != PIPELINE:
        raise InputError(f"--model {args.model} holds the understanding model only: give a pipeline folder.")
    pipe = load_pipeline(resolved.path, task, weight_dtype)
    pipe.to(accelerator.device)
    data = cache_examples(args, pipe, task, examples, accelerator)
    validation_call = validation_conditions(args, pipe, task) if accelerator.is_main_process else {}
    pipe.text_encoder = None
    if data.latents_cached and not validation_call:
        pipe.vae.to("cpu")  # kept for its config (scaling, shift)
    free_memory()

    # 2. LoRA on the transformer; everything else stays frozen.
    set_seed(args.seed)
    transformer = pipe.transformer
    config = lora_config(args)
    transformer.add_adapter(config)
    if accelerator.mixed_precision in ("fp16", "bf16"):
        cast_training_params(transformer, dtype=torch.float32)  # the LoRA weights train in float32
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    parameters = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    per_step = args.gradient_accumulation_steps * accelerator.num_processes
    steps_per_epoch = math.ceil(batches_per_epoch(data.sizes, args.train_batch_size) / per_step)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )

    def save_model_hook(models, weights, folder):
        # The checkpoint holds the LoRA weights only, as the final output does.
        for model in models:
            if accelerator.is_main_process:
                save_lora(type(pipe), Path(folder), accelerator.unwrap_model(model), config)
            if weights:
                weights.pop()

    def load_model_hook(models, folder):
        model = accelerator.unwrap_model(models.pop())
        state_dict = type(pipe).lora_state_dict(folder)
        prefix = f"{type(pipe).transformer_name}."
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        incompatible = set_peft_model_state_dict(model, state_dict, adapter_name="default")
        unexpected = getattr(incompatible, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"The checkpoint {folder} has LoRA weights this model lacks: {unexpected[:5]}")
        if accelerator.mixed_precision in ("fp16", "bf16"):
            cast_training_params(model, dtype=torch.float32)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)
    model, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)

    global_step = 0
    if resume is not None:
        accelerator.print(f"Resuming from checkpoint {resume}")
        accelerator.load_state(str(resume))
        global_step = json.loads((resume / TRAINING_STATE_FILE).read_text())["global_step"]
    elif args.resume_from_checkpoint == "latest":
        accelerator.print(f"No checkpoint in {output_dir}: starting a new training run.")

    if accelerator.is_main_process:
        accelerator.init_trackers("ovis-u1-generation-lora", config={k: v for k, v in vars(args).items() if v is not None})
    trainable = sum(p.numel() for p in parameters)
    logger.info("***** Running training *****")
    logger.info(f"  Task = {task}, examples = {len(examples)}, sizes = {len(set(data.sizes))}")
    logger.info(f"  Trainable (LoRA) parameters = {trainable}")
    logger.info(f"  Batch size per device = {args.train_batch_size}, accumulation = {args.gradient_accumulation_steps}")
    logger.info(f"  Optimizer steps = {max_train_steps} ({steps_per_epoch} per epoch)")

    # 3. The loop: micro-batch m of the run goes to process m % num_processes; its random draws depend on (seed, m).
    scheduler = copy.deepcopy(pipe.scheduler)
    unwrapped = accelerator.unwrap_model(model)
    model.train()
    losses, pending = [], []
    progress = tqdm(total=max_train_steps, initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process)
    stream = micro_batch_stream(data.sizes, args.train_batch_size, args.seed, start=global_step * per_step)
    for micro_batch, indices in stream:
        if global_step >= max_train_steps:
            break
        if micro_batch % accelerator.num_processes != accelerator.process_index:
            continue
        with accelerator.accumulate(model):
            generator = step_generator(args.seed, micro_batch)
            loss, drawn = flow_matching_loss(
                args, pipe, data, model, unwrapped, indices, generator, scheduler, accelerator, weight_dtype
            )
            accelerator.backward(loss)
            if step_callback is not None:
                step_callback(StepRecord(global_step, micro_batch, indices, loss.item(), model=unwrapped, **drawn))
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(parameters, args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        pending.append(loss.detach())
        if not accelerator.sync_gradients:
            continue
        global_step += 1
        step_loss = accelerator.reduce(torch.stack(pending).mean(), reduction="mean").item()
        pending = []
        losses.append(step_loss)
        progress.update(1)
        logs = {"loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]}
        progress.set_postfix(**logs)
        accelerator.log(logs, step=global_step)
        if global_step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
        if validation_call and (global_step % args.validation_steps == 0 or global_step == max_train_steps):
            log_validation(args, pipe, validation_call, unwrapped, accelerator, global_step)
    progress.close()

    # 4. The LoRA weights, as the pipelines load them.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_lora(type(pipe), output_dir, unwrapped, config)
        logger.info(f"Saved the LoRA weights to {output_dir / LORA_WEIGHT_NAME}")
    accelerator.end_training()
    return losses


def main(argv=None, step_callback: Callable[[StepRecord], None] | None = None) -> list[float]:
    """The command line: parses `argv` (default: `sys.argv[1:]`) and trains; returns the per-step losses."""
    return train(parse_args(argv), step_callback)


if __name__ == "__main__":
    try:
        main()
    except (InputError, ModelUnavailableError) as error:  # bad arguments, data or --model
        print(f"generation_lora: error: {error}", file=sys.stderr)
        sys.exit(2)

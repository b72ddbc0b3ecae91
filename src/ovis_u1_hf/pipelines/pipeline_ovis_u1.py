# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""What the Ovis-U1 text-to-image and edit pipelines share: the LLM condition, latents, schedule, sampling, decoding.

This file, like the pipelines, imports only third-party packages: the Ovis-U1 components are reached through the
pipeline's modules, so a saved pipeline folder runs with `trust_remote_code=True` where `ovis_u1_hf` is absent.
"""

import contextlib
import copy
import functools
import hashlib
import inspect
import json
import math
import os
import re
import shutil
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ModelMixin
from diffusers.hooks import FasterCacheConfig, PyramidAttentionBroadcastConfig
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
# FLUX's latent and schedule helpers, from Ovis-Image's pipeline (same code): FLUX's module imports its CLIP, T5 and
# SigLIP classes, and transformers logs a warning per image processor there wherever torchvision is absent.
from diffusers.pipelines.ovis_image.pipeline_ovis_image import OvisImagePipeline, calculate_shift, retrieve_timesteps
from diffusers.utils import USE_PEFT_BACKEND, logging, scale_lora_layers, unscale_lora_layers
from diffusers.utils.dynamic_modules_utils import get_relative_import_files
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedModel, ProcessorMixin

from .transformer_ovis_u1 import OvisU1Transformer2DModel, check_pretrained_path, raise_on_missing_weights


logger = logging.get_logger(__name__)

# Prompts of the released model.
UNCONDITIONAL_PROMPT = "Generate an image."
TEXT_TO_IMAGE_TEMPLATE = (
    "Describe the image by detailing the color, shape, size, texture, quantity, text, and spatial relationships of "
    "the objects:{}"
)
# The condition's image is resized to multiples of 28 (the released 14-pixel patches merged 2 x 2), whatever the
# checkpoint's own patch grid; at least this many pixels, at most the image processor's `min_pixels`.
CONDITION_IMAGE_FACTOR = 28
CONDITION_IMAGE_MIN_PIXELS = 56 * 56
# Largest height or width the pipelines generate. The released model never sees a larger image: its image processor
# caps images at `max_pixels` = 3211264 = 1792 * 1792 (preprocessor_config.json), and its sampler is calibrated for
# smaller ones still (the timestep shift is fitted up to 4096 packed tokens, 1024 * 1024, and edits are kept under
# 1003520 pixels). Checked before anything is allocated: a 16384 * 16384 request would need gigabytes for its white
# condition image alone.
MAX_IMAGE_SIZE = 1792
# Language-model outputs kept per pipeline for inputs that repeat across calls (visual embeddings and conditions:
# a few MB each for the released model).
CONDITION_CACHE_SIZE = 16
# diffusers' attention backends whose kernels take no key mask (their functions in `attention_dispatch` raise on
# `attn_mask`): with one of them every transformer call goes unpadded and unmasked.
MASKLESS_ATTENTION_BACKENDS = frozenset(
    {
        "flash", "flash_hub", "flash_4_hub", "_flash_3", "_flash_3_hub", "aiter_fa2_hub", "_native_flash", "_native_xla",
        "sage", "sage_hub", "sage_blackwell_hub", "_sage_qk_int8_pv_fp8_cuda", "_sage_qk_int8_pv_fp8_cuda_sm90",
        "_sage_qk_int8_pv_fp16_cuda", "_sage_qk_int8_pv_fp16_triton",
    }
)  # fmt: skip

# A saved pipeline folder carries its code: these pipeline modules at its root, and each Ovis-U1 component's module
# in the component's folder. With the package installed, the modules below are used instead of the folder's copies.
PIPELINE_MODULES = ("pipeline_ovis_u1_text_to_image", "pipeline_ovis_u1_edit")
PACKAGE_MODULES = {
    "modeling_ovis_u1": "ovis_u1_hf.modeling.modeling_ovis_u1",
    "processing_ovis_u1": "ovis_u1_hf.modeling.processing_ovis_u1",
    "transformer_ovis_u1": "ovis_u1_hf.pipelines.transformer_ovis_u1",
}


class OvisU1PipelineMixin:
    """
    Shared machinery of [`OvisU1TextToImagePipeline`] and [`OvisU1EditPipeline`]. A mixin rather than a
    `DiffusionPipeline` subclass: diffusers loads a remote pipeline file by finding its one `DiffusionPipeline` class.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    # The conditions are those of every guidance branch, stacked along the batch as the transformer sees them.
    _callback_tensor_inputs = ["latents", "prompt_embeds", "prompt_embeds_mask"]

    def __init__(
        self,
        text_encoder: PreTrainedModel,
        processor: ProcessorMixin,
        transformer: OvisU1Transformer2DModel,
        vae: AutoencoderKL,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ):
        super().__init__()
        self.register_modules(
            text_encoder=text_encoder, processor=processor, transformer=transformer, vae=vae, scheduler=scheduler
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        # Latents are packed in 2x2 groups, so sizes are multiples of twice the VAE factor.
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor * 2)
        # Outputs kept for reuse across calls (see `ReuseCache`): the text encoder's conditions and visual embeddings,
        # and the VAE posteriors of the images to edit.
        self.condition_cache = ReuseCache()
        self.context_cache = ReuseCache()

    # ------------------------------------------------------------------ saving and loading --------------------------
    #
    # diffusers runs a folder's own code only when `model_index.json` names files of the folder: `_class_name` as
    # [pipeline module, class] and each component as [module, class] with `<component>/<module>.py` present. Such a
    # folder loads with `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` where this package is
    # absent, and with `OvisU1TextToImagePipeline.from_pretrained(folder)` / `OvisU1EditPipeline.from_pretrained`
    # from the installed package, which then reads the folder's modules as the package's (no remote code).

    def save_config(self, save_directory, *args, **kwargs):
        # Called by `save_pretrained` after the components are saved and before any push to the Hub.
        super().save_config(save_directory, *args, **kwargs)
        here = os.path.dirname(os.path.abspath(__file__))
        for module in PIPELINE_MODULES:
            copy_module(os.path.join(here, module + ".py"), save_directory)
        index_file = os.path.join(save_directory, "model_index.json")
        with open(index_file) as f:
            index = json.load(f)
        index["_class_name"] = [type(self).__module__.rsplit(".", 1)[-1], type(self).__name__]
        for name, component in self.components.items():
            if component is None or type(component).__module__.split(".")[0] in ("diffusers", "transformers"):
                continue
            source = inspect.getsourcefile(type(component))
            module = copy_module(source, os.path.join(save_directory, name))
            if isinstance(component, torch.nn.Module):
                # From the Hub, diffusers fetches only `<component>/<module>.py` of a folder holding weights, none of
                # the files it imports: that module must stand alone.
                with open(os.path.join(save_directory, name, module + ".py"), "w", encoding="utf-8") as f:
                    f.write(flatten_relative_imports(source))
            # transformers looks for `auto_map` code at the root even when loading a subfolder.
            copy_module(source, save_directory)
            index[name] = [module, type(component).__name__]
            if isinstance(component, ModelMixin) and getattr(component, "_auto_class", None):
                # `diffusers.AutoModel.from_pretrained(folder, subfolder=name, trust_remote_code=True)` reads
                # `auto_map` from model_index.json, not from the component's config.json.
                index.setdefault("auto_map", {})[component._auto_class] = f"{module}.{type(component).__name__}"
        with open(index_file, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """
        As [`~DiffusionPipeline.from_pretrained`], with these differences: weights load from safetensors only (a
        pickled `.bin` file is never unpickled); a local folder that does not exist, the released (unconverted)
        checkpoint and missing weights are clear errors, raised before (or instead of) running with random weights.
        """
        path = check_pretrained_path(pretrained_model_name_or_path)
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "model_index.json")):
            config_file = os.path.join(path, "config.json")
            config = {}
            if os.path.isfile(config_file):
                with open(config_file) as f:
                    config = json.load(f)
            if "visual_generator_config" in config or "llm_config" in config:
                raise OSError(
                    f"{path} is the released Ovis-U1 checkpoint: convert it first with "
                    f"`ovis-u1 convert OUTPUT --source {path}`, then load OUTPUT."
                )
        if kwargs.get("use_safetensors") is None:
            kwargs["use_safetensors"] = True
        if kwargs.get("use_safetensors") is not True:
            raise ValueError("Ovis-U1 weights load from safetensors files only: leave `use_safetensors` unset.")
        if isinstance(kwargs.get("dtype"), torch.dtype):
            # The SDXL VAE decodes in float32 (SPEC 11); a per-component dict chooses otherwise.
            kwargs["dtype"] = {"default": kwargs["dtype"], "vae": torch.float32}
        pipe = super().from_pretrained(path, **kwargs)
        if os.path.isdir(path):
            # diffusers only warns when a component's weights are missing; the transformer and the text encoder check
            # their own, the other models (the VAE) are checked against their files here.
            for name, component in pipe.components.items():
                if isinstance(component, ModelMixin) and not isinstance(component, OvisU1Transformer2DModel):
                    stored = stored_weight_names(os.path.join(path, name))
                    if stored is not None:
                        missing = set(component.state_dict()) - stored
                        raise_on_missing_weights(os.path.join(path, name), type(component).__name__, missing)
        return pipe

    @classmethod
    def _dict_from_json_file(cls, json_file):
        config = super()._dict_from_json_file(json_file)
        if isinstance(config.get("_class_name"), list):
            # `SomePipeline.from_pretrained` loads that class, not the folder's pipeline code.
            config["_class_name"] = cls.__name__
        return config

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # `auto_map` (see `save_config`) is for `AutoModel`, not a pipeline argument.
        config_dict = {key: value for key, value in config_dict.items() if key != "auto_map"}
        return super().extract_init_dict(config_dict, **kwargs)

    @classmethod
    def load_config(cls, *args, **kwargs):
        outputs = super().load_config(*args, **kwargs)
        config = outputs[0] if isinstance(outputs, tuple) else outputs
        if cls.__module__.startswith("ovis_u1_hf."):
            # From the installed package: its own modules replace the folder's copies (found in `sys.modules`).
            for name, value in config.items():
                if isinstance(value, list) and len(value) == 2 and value[0] in PACKAGE_MODULES:
                    config[name] = [PACKAGE_MODULES[value[0]], value[1]]
        return outputs

    def to(self, *args, **kwargs):
        """As [`~DiffusionPipeline.to`]; a dtype given here leaves the VAE in float32, as it decodes (also through
        `from_pipe(..., dtype=...)`)."""
        dtype = kwargs.pop("dtype", None)
        dtype = next((a for a in args if isinstance(a, torch.dtype)), dtype)
        args = [a for a in args if not isinstance(a, torch.dtype)]
        pipe = super().to(*args, **kwargs) if args or kwargs else self
        if dtype is None:
            return pipe
        for name, module in self.components.items():
            if not isinstance(module, torch.nn.Module):
                continue
            target = torch.float32 if name == "vae" else dtype
            if getattr(module, "is_quantized", False):
                # A quantized model cannot be cast: diffusers' own error, unless it already computes in `target` (as
                # `from_pipe` asks without a dtype).
                if module.dtype != target:
                    module.to(dtype=target)
            else:
                # `ModelMixin.to` warns about float32 modules on every dtype cast, even with none listed.
                torch.nn.Module.to(module, dtype=target)
        return pipe

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * 2

    # ------------------------------------------------------------------ condition -----------------------------------

    def condition_image(self, image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
        """The image the language model sees for a `width` x `height` target: fitted, then resized once to
        at most the image processor's `min_pixels` (the processor may resize it again)."""
        image_processor = self.processor.image_processor
        image = image_processor.fit_image(image, width, height)
        size = image_processor.smart_resize(
            height, width, CONDITION_IMAGE_FACTOR, CONDITION_IMAGE_MIN_PIXELS, image_processor.min_pixels
        )
        return image.resize(size[::-1], resample=PIL.Image.Resampling.BICUBIC)

    def encode_condition(
        self,
        texts: list[str],
        images: list[PIL.Image.Image],
        device: torch.device,
        lora_scale: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The generation conditions of user turns `"<image>\\n" + text`, one image each: `(batch, length, 2 * hidden)`,
        left padded to one length with padding zeroed, and the mask. `lora_scale` weighs the text encoder's LoRA layers
        for this call.

        Each turn runs alone, unpadded, so that its condition does not depend on the others in the batch: a turn seen
        before (the unconditional branches, a prompt run again) and an image seen before (the white image, an image
        edited again) are taken from `condition_cache` instead, exactly as computed then.
        """
        cache = self.condition_cache.for_model(self.text_encoder)
        conditions = []
        for text, image in zip(texts, images):
            digest = image_digest(image)
            compute = functools.partial(self.encode_turn, text, image, digest, device, lora_scale, cache)
            conditions.append((cache.get(("condition", text, digest), compute), None))
        return self.stack_conditions(conditions, device)

    def encode_turn(
        self,
        text: str,
        image: PIL.Image.Image,
        digest: str,
        device: torch.device,
        lora_scale: float | None,
        cache: "ReuseCache",
    ) -> torch.Tensor:
        """The condition `(1, length, 2 * hidden)` of one user turn; its image's visual embeddings from `cache` when
        they are there."""
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        # The prompts are user text: `<image>` or special tokens typed in them stay text.
        inputs = self.processor.encode_chat([conversation], images=[[image]], return_tensors="pt").to(device)
        pixel_values = inputs.pop("pixel_values")
        with scaled_lora(self.text_encoder, lora_scale):

            def visual_embeddings():
                features = self.text_encoder.get_image_features(pixel_values, inputs["image_grid_thw"])
                return features.pooler_output[0]

            inputs["image_hidden_states"] = cache.get(("visual", digest), visual_embeddings).to(device)
            return self.text_encoder.get_generation_condition(**inputs)

    @staticmethod
    def stack_conditions(embeds: list[tuple[torch.Tensor, torch.Tensor | None]], device: torch.device):
        """Stacks `(condition, mask)` pairs along the batch, left padding them to one length (a missing mask is all
        ones); the condition is zero wherever its mask is 0."""
        length = max(condition.shape[1] for condition, _ in embeds)
        conditions, masks = [], []
        for condition, mask in embeds:
            condition = condition.to(device)
            mask = torch.ones(condition.shape[:2], dtype=torch.bool, device=device) if mask is None else mask.to(device)
            pad = length - condition.shape[1]
            conditions.append(torch.nn.functional.pad(condition, (0, 0, pad, 0)))
            masks.append(torch.nn.functional.pad(mask.bool(), (pad, 0), value=False))
        condition, mask = torch.cat(conditions), torch.cat(masks)
        return condition.masked_fill(~mask[..., None], 0.0), mask

    def refine(
        self, condition: torch.Tensor, mask: torch.Tensor, lora_scale: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The token refiner has no timestep input: run it once for all denoising steps. With an attention backend
        that takes no mask, each row is refined alone without its padding."""
        condition = condition.to(self.transformer.dtype)
        with scaled_lora(self.transformer, lora_scale):
            if mask is None or self.attention_takes_masks():
                tokens, pooled = self.transformer.refine_condition(condition, mask)
            else:
                rows = []
                for row, row_mask in zip(condition, mask.bool()):
                    start = int(row_mask.int().argmax())  # left padded
                    rows.append(self.transformer.refine_condition(row[None, start:], None))
                width = condition.shape[1]
                tokens = torch.cat([F.pad(t, (0, 0, width - t.shape[1], 0)) for t, _ in rows])
                pooled = torch.cat([p for _, p in rows])
        return tokens, pooled, mask

    def attention_takes_masks(self) -> bool:
        """Whether the transformer's attention backend takes key masks (see `MASKLESS_ATTENTION_BACKENDS`)."""
        return attention_backend(self.transformer) not in MASKLESS_ATTENTION_BACKENDS

    # ------------------------------------------------------------------ latents -------------------------------------
    #
    # Ovis-U1's MMDiT packs latents and places its tokens as FLUX does: FLUX's helpers (Ovis-Image's copies, see the
    # imports), in the grid units used here.

    @staticmethod
    def pack_latents(latents: torch.Tensor) -> torch.Tensor:
        """`(B, C, 2h, 2w)` -> `(B, h * w, C * 4)`, channel-major within each 2x2 group."""
        return OvisImagePipeline._pack_latents(latents, *latents.shape)

    @staticmethod
    def unpack_latents(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Inverse of `pack_latents`: `(B, height * width, C * 4)` -> `(B, C, 2 * height, 2 * width)`."""
        # FLUX's takes the image size and the VAE factor: the latent size with factor 1.
        return OvisImagePipeline._unpack_latents(latents, 2 * height, 2 * width, 1)

    @staticmethod
    def latent_ids(height: int, width: int, index: int, device: torch.device) -> torch.Tensor:
        """Rotary positions `(index, row, col)` of a `height` x `width` grid of packed tokens: index 0 for the noise,
        1 for an edit's context image (as FLUX Kontext marks its context image)."""
        # In float32, where FLUX passes the model dtype: bfloat16 cannot hold every row and column index past 256.
        ids = OvisImagePipeline._prepare_latent_image_ids(None, height, width, device, torch.float32)
        ids[..., 0] = index
        return ids

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Packed-token grid of a `height` x `width` image."""
        return -(-height // self.size_multiple), -(-width // self.size_multiple)

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, int, int, int]:
        grid_h, grid_w = self.token_grid(height, width)
        return (batch_size, self.vae.config.latent_channels, grid_h * 2, grid_w * 2)

    def prepare_latents(
        self,
        batch_size: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Packed noise `(batch_size, tokens, 4 * latent_channels)`, or the given `latents` (see `check_batch`) packed."""
        shape = self.latent_shape(batch_size, height, width)
        if latents is not None:
            latents = self.pack_latents(latents) if latents.ndim == 4 else latents
            return latents.to(device=device, dtype=dtype)
        # Drawn in float32 on the generator's device, so a seed gives the same image on CPU and GPU.
        noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        return self.pack_latents(noise).to(dtype)

    def timesteps(
        self,
        num_inference_steps: int,
        image_seq_len: int,
        device: torch.device,
        scheduler: FlowMatchEulerDiscreteScheduler | None = None,
        sigmas: list[float] | None = None,
    ) -> torch.Tensor:
        """`t = linspace(1, 0, steps + 1)` (or the given `sigmas`, followed by 0), exponentially shifted by the image
        size when the scheduler shifts. Sets the schedule of `scheduler` (default: the pipeline's)."""
        scheduler = self.scheduler if scheduler is None else scheduler
        if sigmas is None:
            sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
        config = scheduler.config
        mu = None
        if config.use_dynamic_shifting:
            # The shift grows linearly with the number of noise tokens (FLUX's rule).
            mu = calculate_shift(
                image_seq_len, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift
            )
        return retrieve_timesteps(scheduler, device=device, sigmas=sigmas, mu=mu)[0]

    def call_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        """A copy of the scheduler for one call: its schedule and step index are per call, so that calls running at
        once in several threads do not step each other's schedule."""
        return copy.deepcopy(self.scheduler)

    # ------------------------------------------------------------------ sampling ------------------------------------

    def denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        branches: dict,
        combine: Callable[[torch.Tensor], torch.Tensor],
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: list[str],
        scheduler: FlowMatchEulerDiscreteScheduler | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Euler sampling with `scheduler` (default: the pipeline's), whose timesteps must be set. `branches` holds the
        transformer inputs of every guidance branch stacked along the batch (`num_branches * batch` rows), predicted
        by one transformer call per step or one per branch (see `batches_guidance_branches`); `combine` turns the
        stacked velocities `(num_branches, batch, ...)` into the guided one. `prompt_embeds` / `prompt_embeds_mask`
        are the unrefined conditions of those rows: a step callback may read them and return new ones, which are
        refined again.
        """
        scheduler = self.scheduler if scheduler is None else scheduler
        num_branches = branches["encoder_hidden_states"].shape[0] // latents.shape[0]
        batched = self.batches_guidance_branches(latents.device)
        takes_masks = self.attention_takes_masks()
        self._num_timesteps = len(timesteps)
        attention_kwargs = dict(self.attention_kwargs or {})
        scale = attention_kwargs.pop("scale", None)
        if "attention_kwargs" in inspect.signature(self.transformer.forward).parameters:
            branches = {**branches, "attention_kwargs": self.attention_kwargs}
            scale = None  # the transformer weighs its LoRA layers itself
        elif attention_kwargs:
            raise ValueError(f"The transformer takes no attention kwargs besides `scale`, got {sorted(attention_kwargs)}.")

        def calls(branches: dict) -> tuple[dict, list | None]:
            """The inputs of the one batched call, or of each branch's calls."""
            if batched:
                return without_full_masks(branches, takes_masks), None
            return branches, split_branches(branches, num_branches, by_row=not takes_masks)

        with self.progress_bar(total=len(timesteps)) as progress_bar, scaled_lora(self.transformer, scale):
            branches, per_branch = calls(branches)
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                timestep = (t / 1000).expand(latents.shape[0]).to(latents.dtype)
                # The cache hooks of `transformer.enable_cache` keep their state per context: one per call.
                if batched:
                    with self.transformer.cache_context("cond_uncond"):
                        velocity = self.transformer(
                            hidden_states=latents.repeat(num_branches, 1, 1),
                            timestep=timestep.repeat(num_branches),
                            return_dict=False,
                            **branches,
                        )[0]
                    velocity = velocity.unflatten(0, (num_branches, -1))
                else:
                    velocities = []
                    for index, groups in enumerate(per_branch):
                        parts = []
                        for rows, inputs in groups:
                            context = f"branch_{index}" if len(groups) == 1 else f"branch_{index}_row_{rows.start}"
                            with self.transformer.cache_context(context):
                                parts.append(
                                    self.transformer(
                                        hidden_states=latents[rows], timestep=timestep[rows], return_dict=False, **inputs
                                    )[0]
                                )
                        velocities.append(parts[0] if len(parts) == 1 else torch.cat(parts))
                    velocity = torch.stack(velocities)
                velocity = combine(velocity)
                latents = scheduler.step(velocity, t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    local_tensors = {
                        "latents": latents, "prompt_embeds": prompt_embeds, "prompt_embeds_mask": prompt_embeds_mask
                    }
                    callback_kwargs = {name: local_tensors[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                    new_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    new_mask = callback_outputs.pop("prompt_embeds_mask", prompt_embeds_mask)
                    if new_embeds is not prompt_embeds or new_mask is not prompt_embeds_mask:
                        # The refiner has no timestep input: new conditions are refined once, for the steps left.
                        prompt_embeds, prompt_embeds_mask = new_embeds, new_mask
                        refine_scale = (self.attention_kwargs or {}).get("scale") if scale is None else None
                        tokens, pooled, mask = self.refine(prompt_embeds, prompt_embeds_mask, refine_scale)
                        branches, per_branch = calls(
                            {
                                **branches, "encoder_hidden_states": tokens, "pooled_projections": pooled,
                                "encoder_attention_mask": mask,
                            }
                        )
                progress_bar.update()
        self._current_timestep = None
        return latents

    def batches_guidance_branches(self, device: torch.device) -> bool:
        """
        Whether `denoise` predicts all guidance branches in one transformer call (`True`) or calls the transformer once
        per branch, each on its own condition without padding and the edit's no-both branch without context tokens.
        Set `pipe.batch_guidance_branches` to choose; by default one call on accelerators, where a call's overhead
        weighs, and one per branch on the CPU, where the unpadded calls measured faster (PyTorch's CPU attention takes
        its slow path for masked keys; `benchmarks/bench_speedups.py`). Pyramid attention broadcast and FasterCache
        always get one call: their hooks keep one state for all calls of a step. An attention backend that takes no
        mask (flash-attn, Sage) gets one call per branch and prompt, none of them padded.
        """
        choice = getattr(self, "batch_guidance_branches", None)
        if choice is not None:
            return bool(choice)
        cache_config = getattr(self.transformer, "_cache_config", None)
        if isinstance(cache_config, (PyramidAttentionBroadcastConfig, FasterCacheConfig)):
            return True
        return torch.device(device).type != "cpu" and self.attention_takes_masks()

    def image_posterior(self, image: PIL.Image.Image, device: torch.device) -> torch.Tensor:
        """The parameters (mean and log-variance) of the VAE posterior of an image whose sides are multiples of 16."""
        # Images already at the output size: no resizing, only `x / 127.5 - 1` in [-1, 1].
        pixels = self.image_processor.preprocess([image], height=image.height, width=image.width)
        return self.vae.encode(pixels.to(device=device, dtype=self.vae.dtype)).latent_dist.parameters

    def pack_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents `(B, C, 2h, 2w)` shifted, scaled and packed into the transformer's tokens (`decode` undoes it)."""
        shift = self.vae.config.shift_factor or 0.0
        return self.pack_latents((latents - shift) * self.vae.config.scaling_factor)

    def decode(self, latents: torch.Tensor, height: int, width: int, output_type: str):
        if output_type == "latent":
            return latents
        grid_h, grid_w = self.token_grid(height, width)
        latents = self.unpack_latents(latents, grid_h, grid_w)
        shift = self.vae.config.shift_factor or 0.0
        latents = latents / self.vae.config.scaling_factor + shift
        # The VAE decodes in float32, as the released model does: it is kept so from load time on (see `to`).
        image = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]
        return self.image_processor.postprocess(image.clamp(-1, 1), output_type=output_type)

    # ------------------------------------------------------------------ checks --------------------------------------

    def check_common_inputs(
        self, num_inference_steps, guidance_scales: dict, num_images_per_prompt, output_type, callback_inputs, sigmas=None
    ) -> None:
        if sigmas is not None:
            values = np.asarray(sigmas, dtype=np.float64) if isinstance(sigmas, (list, tuple, np.ndarray)) else None
            if values is None or values.ndim != 1 or not len(values) or not np.isfinite(values).all():
                raise ValueError(f"`sigmas` must be a non-empty list of finite noise levels, got {sigmas!r}.")
            if (values <= 0).any() or (values > 1).any() or (np.diff(values) >= 0).any():
                raise ValueError("`sigmas` must decrease strictly within (0, 1] (the final 0 is appended).")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        for name, value in guidance_scales.items():
            # NaN passes every comparison and an infinite scale turns every velocity into NaN: both give NaN images.
            try:
                finite = not isinstance(value, (bool, str)) and math.isfinite(value)
            except TypeError:
                finite = False
            if not finite or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, got {num_images_per_prompt!r}.")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}.")
        unknown = [name for name in callback_inputs or [] if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}, got {unknown}.")

    def check_embeds(self, embeds, name: str, batch_size: int | None = None, mask=None) -> None:
        if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point() or embeds.ndim != 3:
            raise ValueError(f"`{name}` must be a floating-point tensor (batch, length, width), got {embeds!r:.80}.")
        width = self.transformer.config.joint_attention_dim
        if embeds.shape[-1] != width:
            raise ValueError(f"`{name}` must have width {width} (the transformer's condition width), got {embeds.shape[-1]}.")
        if batch_size is not None and embeds.shape[0] != batch_size:
            raise ValueError(f"`{name}` has {embeds.shape[0]} rows, expected {batch_size}.")
        if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(embeds.shape[:2])):
            raise ValueError(f"`{name}_mask` must be a tensor of shape {tuple(embeds.shape[:2])}.")

    def check_batch(self, batch_size: int, height: int, width: int, generator, latents) -> None:
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"Got {len(generator)} generators for {batch_size} images.")
        if latents is not None:
            if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
                # Integer noise would be cast to the model dtype silently: standard normal noise is never integer.
                kind = latents.dtype if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"`latents` must be a floating-point tensor of noise, got {kind}.")
            shape = self.latent_shape(batch_size, height, width)
            packed_shape = (batch_size, shape[2] * shape[3] // 4, shape[1] * 4)
            if tuple(latents.shape) not in (shape, packed_shape):
                raise ValueError(
                    f"`latents` must have shape {shape} (or packed {packed_shape}) for {batch_size} image(s) of "
                    f"{width}x{height}, got {tuple(latents.shape)}."
                )

    def check_size(self, height, width) -> tuple[int, int]:
        """Floors a requested size to multiples of 16 (warning when it changes), as the released pipelines do."""
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
            if value > MAX_IMAGE_SIZE:
                raise ValueError(
                    f"`{name}` must be at most {MAX_IMAGE_SIZE} (the largest image size of Ovis-U1), got {value}."
                )
        multiple = self.size_multiple
        floored = (height // multiple * multiple, width // multiple * multiple)
        if 0 in floored:
            raise ValueError(f"The image size must be at least {multiple}x{multiple}, got {width}x{height}.")
        if floored != (height, width):
            logger.warning(f"{width}x{height} is not a multiple of {multiple}: generating {floored[1]}x{floored[0]}.")
        return floored

    @staticmethod
    def check_prompts(prompt, name: str = "prompt") -> list[str]:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"`{name}` must be a string or a non-empty list of strings, got {type(prompt).__name__}.")
        if any(not p.strip() for p in prompts):
            raise ValueError(f"`{name}` must not be empty.")
        return prompts

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def attention_kwargs(self):
        return getattr(self, "_attention_kwargs", None)

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def current_timestep(self):
        return self._current_timestep

    @property
    def interrupt(self):
        return self._interrupt


def split_branches(branches: dict, num_branches: int, by_row: bool = False) -> list[list[tuple[slice, dict]]]:
    """
    The transformer calls of each guidance branch from inputs stacked along the batch, as `(rows, inputs)` pairs:
    condition tokens without the left padding every row of the branch has (and no mask when none is left), and no
    context tokens where the branch's context mask is all 0. Padding and masked-out context tokens change nothing but
    the time a call takes. `by_row` splits a branch whose rows still need a mask into one call per row.
    """
    split = []
    for chunk in range(num_branches):
        inputs = dict(branches)
        for name in _PER_ROW_INPUTS:
            if inputs.get(name) is not None:
                inputs[name] = inputs[name].chunk(num_branches)[chunk]
        inputs = unpadded(inputs)
        groups = [(slice(None), inputs)]
        masked = any(inputs.get(name) is not None for name in _MASK_INPUTS)
        if by_row and masked:
            rows = inputs["encoder_hidden_states"].shape[0]
            groups = [(slice(row, row + 1), unpadded(row_inputs(inputs, row))) for row in range(rows)]
        split.append(groups)
    return split


_MASK_INPUTS = ("encoder_attention_mask", "context_attention_mask")
_PER_ROW_INPUTS = ("encoder_hidden_states", "pooled_projections", "encoder_attention_mask", "context_hidden_states",
                   "context_attention_mask")  # fmt: skip


def row_inputs(inputs: dict, row: int) -> dict:
    return {
        name: value[row : row + 1] if name in _PER_ROW_INPUTS and value is not None else value
        for name, value in inputs.items()
    }


def unpadded(inputs: dict) -> dict:
    """`inputs` without the condition columns that no row uses, and without masks that mask nothing."""
    inputs = dict(inputs)
    mask = inputs.get("encoder_attention_mask")
    if mask is not None:
        # Conditions are left padded: keep the columns from the first that any row uses.
        used = mask.bool().any(0)
        start = int(used.int().argmax()) if used.any() else 0
        inputs["encoder_hidden_states"] = inputs["encoder_hidden_states"][:, start:]
        mask = mask[:, start:]
        inputs["encoder_attention_mask"] = None if mask.bool().all() else mask
    context_mask = inputs.get("context_attention_mask")
    if context_mask is not None:
        if not context_mask.bool().any():
            for name in ("context_hidden_states", "context_ids", "context_attention_mask"):
                inputs.pop(name, None)
        elif context_mask.bool().all():
            inputs["context_attention_mask"] = None
    return inputs


def without_full_masks(branches: dict, takes_masks: bool = True) -> dict:
    """The stacked inputs without the key masks that mask nothing: attention takes its unmasked kernels then (on
    GPUs the flash kernels, which a boolean mask rules out). Masks that are left need a backend that takes them."""
    inputs = dict(branches)
    for name in _MASK_INPUTS:
        if inputs.get(name) is not None and inputs[name].bool().all():
            inputs[name] = None
    if not takes_masks and any(inputs.get(name) is not None for name in _MASK_INPUTS):
        raise ValueError(
            "The guidance branches in one transformer call need key masks (their conditions differ in length), which "
            "the transformer's attention backend does not take. Let the pipeline call the transformer once per branch "
            "(`pipe.batch_guidance_branches = None`, and no pyramid attention broadcast or FasterCache), or choose a "
            "backend with masks, e.g. `transformer.set_attention_backend(\"flash_varlen\")`."
        )
    return inputs


def attention_backend(model: torch.nn.Module) -> str:
    """The diffusers attention backend `model` runs on: the one `set_attention_backend` chose, else the active default
    (the `attention_backend` context manager or `DIFFUSERS_ATTN_BACKEND`)."""
    for module in model.modules():
        backend = getattr(getattr(module, "processor", None), "_attention_backend", None)
        if backend is not None:
            return AttentionBackendName(backend).value
    return _AttentionBackendRegistry.get_active_backend()[0].value


class ReuseCache:
    """
    Outputs of one model of a pipeline kept for reuse across calls, least recently used first out: the text encoder's
    visual embeddings of each distinct condition image and condition of each (text, image) turn, the VAE's posterior
    of each image to edit. They are used only while the model keeps the same weights unchanged (no in-place update,
    cast, move or replacement since they were computed), is in eval mode and has no adapter layers (whose scales may
    change between calls); otherwise everything is computed afresh.
    """

    def __init__(self, size: int = CONDITION_CACHE_SIZE):
        self.size = size
        self.entries = OrderedDict()
        self.weights = None
        self.lock = threading.Lock()  # calls may run in several threads

    def for_model(self, model: torch.nn.Module) -> "ReuseCache":
        """This cache, if its entries may be reused for `model` (forgetting them when its weights changed), else an
        empty one for a single call, so that repeats within the call are still computed once."""
        usable = self.size > 0 and not model.training and not has_adapter_layers(model)
        with self.lock:
            if not usable or not same_weights(self.weights, model):
                self.entries.clear()
                self.weights = weights_state(model) if usable else None
        return self if usable else ReuseCache()

    def get(self, key, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        with self.lock:
            value = self.entries.get(key)
            if value is not None:
                self.entries.move_to_end(key)
                return value
        value = compute()
        with self.lock:
            self.entries[key] = value
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


def weights_state(model: torch.nn.Module) -> tuple:
    """What identifies `model`'s weights as they are: each parameter (held weakly), its in-place version counter and
    its storage (replaced by a cast, a move or `.data =`)."""
    return tuple((weakref.ref(p), p._version, p.data_ptr(), p.dtype) for p in model.parameters())


def same_weights(state: tuple | None, model: torch.nn.Module) -> bool:
    if state is None:
        return False
    parameters = list(model.parameters())
    return len(parameters) == len(state) and all(
        ref() is p and version == p._version and pointer == p.data_ptr() and dtype == p.dtype
        for (ref, version, pointer, dtype), p in zip(state, parameters)
    )


def has_adapter_layers(model: torch.nn.Module) -> bool:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return False
    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def image_digest(image: PIL.Image.Image) -> str:
    """A key of the image's content."""
    header = f"{image.mode}{image.size}".encode()
    return hashlib.blake2b(header + image.tobytes(), digest_size=16).hexdigest()


@contextlib.contextmanager
def scaled_lora(model: torch.nn.Module, scale: float | None):
    """Weighs the LoRA layers of `model` by `scale` inside the block, as diffusers' `apply_lora_scale` does."""
    if scale is None or scale == 1.0 or model is None:
        yield
        return
    if not USE_PEFT_BACKEND:
        logger.warning("A LoRA `scale` has no effect without peft installed.")
        yield
        return
    scale_lora_layers(model, scale)
    try:
        yield
    finally:
        unscale_lora_layers(model, scale)


def stored_weight_names(folder: str) -> set[str] | None:
    """Names of the tensors in the safetensors files of `folder` (headers only), or None when it holds none."""
    from safetensors import safe_open

    files = [f for f in os.listdir(folder) if f.endswith(".safetensors")] if os.path.isdir(folder) else []
    if not files:
        return None
    names = set()
    for file in files:
        with safe_open(os.path.join(folder, file), framework="pt") as f:
            names.update(f.keys())
    return names


def copy_module(source: str, folder: str) -> str:
    """Copies a module file and the sibling files it imports relatively into `folder`; returns the module name."""
    os.makedirs(folder, exist_ok=True)
    for file in [source, *get_relative_import_files(source)]:
        target = os.path.join(folder, os.path.basename(file))
        if os.path.abspath(file) != os.path.abspath(target):
            shutil.copyfile(file, target)
    return os.path.splitext(os.path.basename(source))[0]


_RELATIVE_IMPORT = re.compile(r"^from \.(\w+) import (\([^)]*\)|[^\n]*)$", re.MULTILINE)


def flatten_relative_imports(source: str, _seen: set | None = None) -> str:
    """The text of the module `source` with each top-level `from .x import a, b` replaced by the (flattened) text of
    its sibling `x.py`, each module inlined once."""
    seen = set() if _seen is None else _seen
    with open(source, encoding="utf-8") as f:
        text = f.read()
    pieces, position = [], 0
    for match in _RELATIVE_IMPORT.finditer(text):
        pieces.append(text[position : match.start()])
        position = match.end()
        module = match.group(1)
        if module not in seen:
            seen.add(module)
            inlined = flatten_relative_imports(os.path.join(os.path.dirname(source), module + ".py"), seen)
            pieces.append(f"# ---- inlined from {module}.py ----\n{inlined.rstrip()}\n# ---- end of {module}.py ----")
        names = match.group(2).strip("()").replace("\n", " ").split(",")
        pieces.extend(f"\n{alias.strip()} = {name.strip()}" for name, alias in (n.split(" as ") for n in names if " as " in n))
    pieces.append(text[position:])
    return "".join(pieces)

# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""Ovis-U1 text-to-image pipeline."""

from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import replace_example_docstring

# diffusers copies only the modules a pipeline file imports itself: the transformer's too.
from .transformer_ovis_u1 import OvisU1Transformer2DModel  # noqa: F401
from .lora_ovis_u1 import OvisU1LoraLoaderMixin
from .pipeline_ovis_u1 import TEXT_TO_IMAGE_TEMPLATE, UNCONDITIONAL_PROMPT, OvisU1PipelineMixin


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from ovis_u1_hf import OvisU1TextToImagePipeline

        >>> pipe = OvisU1TextToImagePipeline.from_pretrained("ovis-u1-3b", dtype=torch.bfloat16)
        >>> pipe.to("cuda")  # or pipe.enable_model_cpu_offload(), or stay on the CPU
        >>> image = pipe("a cat wearing a red scarf", generator=torch.Generator().manual_seed(0)).images[0]
        >>> image.save("cat.png")
        ```
"""


class OvisU1TextToImagePipeline(OvisU1PipelineMixin, DiffusionPipeline, OvisU1LoraLoaderMixin):
    r"""
    Text-to-image generation with Ovis-U1: the language model turns the prompt (with a white image of the target
    size) into a condition, the token refiner and MMDiT denoise packed SDXL-VAE latents with flow matching, and
    classifier-free guidance mixes in the unconditional branch ("Generate an image.").

    Args:
        text_encoder ([`OvisU1ForConditionalGeneration`]):
            The understanding model, whose language model provides the condition.
        processor ([`OvisU1Processor`]):
            Its processor.
        transformer ([`OvisU1Transformer2DModel`]):
            The token refiner and MMDiT.
        vae ([`AutoencoderKL`]):
            The SDXL VAE.
        scheduler ([`FlowMatchEulerDiscreteScheduler`]):
            Flow-matching Euler scheduler (with exponential dynamic shifting when the model was trained with it).
    """

    prompt_template = TEXT_TO_IMAGE_TEMPLATE
    unconditional_prompt = UNCONDITIONAL_PROMPT

    def encode_prompt(
        self,
        prompt: str | list[str] | None = None,
        height: int = 1024,
        width: int = 1024,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        device: torch.device | None = None,
        lora_scale: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """
        Conditions of the prompts and (with guidance) of the negative prompts (see `encode_condition`).

        The language model sees `"<image>\\n"` + the prompt in the released template with a white `width` x `height`
        image (so a condition belongs to its size: pass the same size to `__call__`); the unconditional branch is
        "Generate an image." unless `negative_prompt` is given.

        Returns:
            `(prompt_embeds, prompt_embeds_mask, negative_prompt_embeds, negative_prompt_embeds_mask)`: conditions
            `(batch, length, 2 * hidden)`, left padded to one length with padding zeroed, and their boolean masks; the
            negative ones are `None` without guidance. Pass them to `__call__` to reuse them across calls and seeds.
        """
        device = device or self._execution_device
        prompts = self.check_prompts(prompt)
        texts = [self.prompt_template.format(p) for p in prompts]
        if do_classifier_free_guidance:
            negative = self.unconditional_prompt if negative_prompt is None else negative_prompt
            negative = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
            if len(negative) != len(prompts):
                raise ValueError(f"Got {len(prompts)} prompts but {len(negative)} negative prompts.")
            texts += negative
        white = self.condition_image(PIL.Image.new("RGB", (width, height), (255, 255, 255)), width, height)
        condition, mask = self.encode_condition(texts, [white] * len(texts), device, lora_scale)
        if not do_classifier_free_guidance:
            return condition, mask, None, None
        n = len(prompts)
        return condition[:n], mask[:n], condition[n:], mask[n:]

    def check_inputs(
        self,
        prompt,
        negative_prompt,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        prompt_embeds_mask=None,
        negative_prompt_embeds_mask=None,
        **common,
    ):
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass `prompt` or `prompt_embeds`, not both.")
        if prompt_embeds is not None:
            if negative_prompt is not None and negative_prompt_embeds is not None:
                raise ValueError("Pass `negative_prompt` or `negative_prompt_embeds`, not both.")
            self.check_embeds(prompt_embeds, "prompt_embeds", mask=prompt_embeds_mask)
            if negative_prompt_embeds is not None:
                self.check_embeds(
                    negative_prompt_embeds, "negative_prompt_embeds", len(prompt_embeds), negative_prompt_embeds_mask
                )
            if isinstance(negative_prompt, list) and len(negative_prompt) != len(prompt_embeds):
                raise ValueError("`negative_prompt` must be a string or a list of strings as long as `prompt`.")
            self.check_common_inputs(**common)
            return None
        prompts = self.check_prompts(prompt)
        if negative_prompt_embeds is not None:
            raise ValueError("`negative_prompt_embeds` need `prompt_embeds`.")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            if (
                not isinstance(negative_prompt, list)
                or len(negative_prompt) != len(prompts)
                or not all(isinstance(p, str) for p in negative_prompt)
            ):
                raise ValueError("`negative_prompt` must be a string or a list of strings as long as `prompt`.")
        self.check_common_inputs(**common)
        return prompts

    @property
    def do_classifier_free_guidance(self):
        """Whether the unconditional branch runs: set by the guidance scale a call starts with."""
        return self._guidance_scale != 1

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int = 1024,
        width: int = 1024,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[OvisU1PipelineMixin, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        attention_kwargs: dict[str, Any] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds_mask: torch.Tensor | None = None,
        sigmas: list[float] | None = None,
    ):
        r"""
        Generates images from text.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                What to draw; or pass `prompt_embeds`.
            height (`int`, defaults to 1024):
                Image height in pixels, at most `MAX_IMAGE_SIZE` (1792, the largest image size of the released
                model); floored to a multiple of 16 (with a warning), as the released model does.
            width (`int`, defaults to 1024):
                Image width in pixels, at most `MAX_IMAGE_SIZE` (1792); floored to a multiple of 16.
            num_inference_steps (`int`, defaults to 50):
                Number of Euler steps.
            guidance_scale (`float`, defaults to 5.0):
                Classifier-free guidance scale `v = v_uncond + scale * (v_cond - v_uncond)`; at 1 the unconditional
                branch is skipped.
            negative_prompt (`str` or `list[str]`, *optional*):
                Text of the unconditional branch; defaults to the released "Generate an image.".
            num_images_per_prompt (`int`, defaults to 1):
                Images per prompt.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Random generator(s) of the initial noise (drawn in float32, so CPU and GPU agree for a seed).
            latents (`torch.Tensor`, *optional*):
                Initial noise `(batch, latent_channels, 2 * ceil(height / 16), 2 * ceil(width / 16))` or packed
                `(batch, tokens, 4 * latent_channels)`, with `batch = len(prompt) * num_images_per_prompt`.
            output_type (`str`, defaults to `"pil"`):
                `"pil"`, `"np"`, `"pt"` or `"latent"` (packed latents).
            return_dict (`bool`, defaults to `True`):
                Whether to return an [`~pipelines.ImagePipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, *optional*):
                Called after each step as `callback_on_step_end(pipe, step, timestep, callback_kwargs)`; may return a
                dict with new tensors among those it was given, and may change `pipe._guidance_scale` (read through
                `pipe.guidance_scale`) for the steps left.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`):
                Tensors passed in `callback_kwargs`: `"latents"`, and `"prompt_embeds"` / `"prompt_embeds_mask"`, the
                conditions of every branch stacked `(conditional, unconditional)` along the batch.
            attention_kwargs (`dict`, *optional*):
                Passed to the transformer's attention; `{"scale": s}` weighs the loaded LoRA layers (of the transformer
                and the text encoder) by `s` for this call.
            prompt_embeds (`torch.Tensor`, *optional*):
                Conditions `(batch, length, 2 * hidden)` from [`~OvisU1TextToImagePipeline.encode_prompt`] (at the same
                `height` and `width`), instead of `prompt`.
            prompt_embeds_mask (`torch.Tensor`, *optional*):
                Their mask `(batch, length)` (1 for tokens, 0 for padding); all ones when not given.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                Conditions of the unconditional branch, with `prompt_embeds`; computed from `negative_prompt` (default
                "Generate an image.") when not given.
            negative_prompt_embeds_mask (`torch.Tensor`, *optional*):
                Their mask.
            sigmas (`list[float]`, *optional*):
                A custom decreasing schedule of noise levels in (0, 1] (0 is appended), shifted like the default one
                when the scheduler shifts; it sets the number of steps.

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the generated images.
        """
        if sigmas is not None and isinstance(sigmas, (list, tuple, np.ndarray)):
            num_inference_steps = len(sigmas)
        prompts = self.check_inputs(
            prompt,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            prompt_embeds_mask,
            negative_prompt_embeds_mask,
            num_inference_steps=num_inference_steps,
            guidance_scales={"guidance_scale": guidance_scale},
            num_images_per_prompt=num_images_per_prompt,
            output_type=output_type,
            callback_inputs=callback_on_step_end_tensor_inputs,
            sigmas=sigmas,
        )
        height, width = self.check_size(height, width)
        self._guidance_scale = guidance_scale
        self._interrupt = False
        self._current_timestep = None
        self._attention_kwargs = attention_kwargs
        lora_scale = (attention_kwargs or {}).get("scale")
        device = self._execution_device
        num_prompts = len(prompts) if prompts is not None else prompt_embeds.shape[0]
        batch_size = num_prompts * num_images_per_prompt
        self.check_batch(batch_size, height, width, generator, latents)

        # 1. Condition of every branch, refined once for all steps.
        do_guidance = self.do_classifier_free_guidance
        if prompt_embeds is None:
            prompt_embeds, prompt_embeds_mask, negative_prompt_embeds, negative_prompt_embeds_mask = self.encode_prompt(
                prompts, height, width, negative_prompt, do_guidance, device, lora_scale
            )
        elif do_guidance and negative_prompt_embeds is None:
            negative = self.unconditional_prompt if negative_prompt is None else negative_prompt
            negative = [negative] * num_prompts if isinstance(negative, str) else negative
            # The negative texts' conditions alone: the prompt template does not apply to them.
            white = self.condition_image(PIL.Image.new("RGB", (width, height), (255, 255, 255)), width, height)
            negative_prompt_embeds, negative_prompt_embeds_mask = self.encode_condition(
                negative, [white] * num_prompts, device, lora_scale
            )
        embeds = [(prompt_embeds, prompt_embeds_mask)]
        if do_guidance:
            embeds.append((negative_prompt_embeds, negative_prompt_embeds_mask))
        condition, mask = self.stack_conditions(embeds, device)
        tokens, pooled, refined_mask = self.refine(condition, mask, lora_scale)
        # Rows are (branch, prompt); repeat each prompt's rows for its images.
        tokens, pooled, refined_mask, condition, mask = (
            x.repeat_interleave(num_images_per_prompt, dim=0) for x in (tokens, pooled, refined_mask, condition, mask)
        )

        # 2. Latents and schedule.
        latents = self.prepare_latents(batch_size, height, width, self.transformer.dtype, device, generator, latents)
        grid_h, grid_w = self.token_grid(height, width)
        img_ids = self.latent_ids(grid_h, grid_w, 0, device)
        scheduler = self.call_scheduler()
        timesteps = self.timesteps(num_inference_steps, latents.shape[1], device, scheduler, sigmas)

        # 3. Denoise with the conditional and unconditional branches. The scale is read at every step: a step callback
        # may change it.
        def combine(velocity):
            if not do_guidance:
                return velocity[0]
            cond, uncond = velocity
            return uncond + self.guidance_scale * (cond - uncond)

        branches = dict(
            img_ids=img_ids, encoder_hidden_states=tokens, pooled_projections=pooled, encoder_attention_mask=refined_mask
        )
        latents = self.denoise(
            latents,
            timesteps,
            branches,
            combine,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            scheduler,
            prompt_embeds=condition,
            prompt_embeds_mask=mask,
        )

        image = self.decode(latents, height, width, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

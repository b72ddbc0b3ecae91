# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""Ovis-U1 text-to-image pipeline."""

from collections.abc import Callable
from typing import Any

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
        prompt: str | list[str],
        height: int,
        width: int,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        device: torch.device | None = None,
        lora_scale: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Conditions of the prompts, then (with guidance) of the negative prompts, stacked along the batch and
        left padded to one length, with their masks. The language model sees `"<image>\\n"` + the prompt in the
        released template, and a white `width` x `height` image; the unconditional branch is "Generate an image."
        unless `negative_prompt` is given.
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
        return self.encode_condition(texts, [white] * len(texts), device, lora_scale)

    def check_inputs(self, prompt, negative_prompt, **common):
        prompts = self.check_prompts(prompt)
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            if (
                not isinstance(negative_prompt, list)
                or len(negative_prompt) != len(prompts)
                or not all(isinstance(p, str) for p in negative_prompt)
            ):
                raise ValueError("`negative_prompt` must be a string or a list of strings as long as `prompt`.")
        self.check_common_inputs(**common)
        return prompts

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str],
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
    ):
        r"""
        Generates images from text.

        Args:
            prompt (`str` or `list[str]`):
                What to draw.
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
                dict with new `latents`.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`):
                Tensors passed in `callback_kwargs`.
            attention_kwargs (`dict`, *optional*):
                Passed to the transformer's attention; `{"scale": s}` weighs the loaded LoRA layers (of the transformer
                and the text encoder) by `s` for this call.

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the generated images.
        """
        prompts = self.check_inputs(
            prompt,
            negative_prompt,
            num_inference_steps=num_inference_steps,
            guidance_scales={"guidance_scale": guidance_scale},
            num_images_per_prompt=num_images_per_prompt,
            output_type=output_type,
            callback_inputs=callback_on_step_end_tensor_inputs,
        )
        height, width = self.check_size(height, width)
        self._interrupt = False
        self._current_timestep = None
        self._attention_kwargs = attention_kwargs
        lora_scale = (attention_kwargs or {}).get("scale")
        device = self._execution_device
        batch_size = len(prompts) * num_images_per_prompt
        self.check_batch(batch_size, height, width, generator, latents)

        # 1. Condition: one language-model call for every branch, refined once for all steps.
        do_guidance = guidance_scale != 1
        condition, mask = self.encode_prompt(prompts, height, width, negative_prompt, do_guidance, device, lora_scale)
        tokens, pooled, mask = self.refine(condition, mask)
        # Rows are (branch, prompt); repeat each prompt's rows for its images.
        tokens, pooled, mask = (x.repeat_interleave(num_images_per_prompt, dim=0) for x in (tokens, pooled, mask))

        # 2. Latents and schedule.
        latents = self.prepare_latents(batch_size, height, width, self.transformer.dtype, device, generator, latents)
        grid_h, grid_w = self.token_grid(height, width)
        img_ids = self.latent_ids(grid_h, grid_w, 0, device)
        scheduler = self.call_scheduler()
        timesteps = self.timesteps(num_inference_steps, latents.shape[1], device, scheduler)

        # 3. Denoise: conditional and unconditional branches in one transformer call per step.
        def combine(velocity):
            if not do_guidance:
                return velocity[0]
            cond, uncond = velocity
            return uncond + guidance_scale * (cond - uncond)

        branches = dict(
            img_ids=img_ids, encoder_hidden_states=tokens, pooled_projections=pooled, encoder_attention_mask=mask
        )
        latents = self.denoise(
            latents, timesteps, branches, combine, callback_on_step_end, callback_on_step_end_tensor_inputs, scheduler
        )

        image = self.decode(latents, height, width, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

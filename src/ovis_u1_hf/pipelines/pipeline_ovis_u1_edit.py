# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""Ovis-U1 instruction-based image editing pipeline."""

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
# From Qwen-Image Edit's module, not FLUX Kontext's, which loads FLUX's CLIP and SigLIP classes (see pipeline_ovis_u1.py).
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import retrieve_latents
from diffusers.utils import replace_example_docstring

# diffusers copies only the modules a pipeline file imports itself: the transformer's too.
from .transformer_ovis_u1 import OvisU1Transformer2DModel  # noqa: F401
from .lora_ovis_u1 import OvisU1LoraLoaderMixin
from .pipeline_ovis_u1 import UNCONDITIONAL_PROMPT, OvisU1PipelineMixin, image_digest


EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from PIL import Image
        >>> from ovis_u1_hf import OvisU1EditPipeline

        >>> pipe = OvisU1EditPipeline.from_pretrained("ovis-u1-3b", dtype=torch.bfloat16).to("cuda")
        >>> image = Image.open("cat.png")
        >>> edited = pipe(image, "make the cat wear a red scarf", generator=torch.Generator().manual_seed(0)).images[0]
        >>> edited.save("edited.png")
        ```
"""

# Output size of an edit: the input's aspect ratio, at most about 1 megapixel, in multiples of 32.
EDIT_SIZE_FACTOR = 32
EDIT_MIN_PIXELS = 56 * 56
EDIT_MAX_PIXELS = 1003520


def sample_posterior(parameters: torch.Tensor, generator) -> torch.Tensor:
    """A sample of the VAE posteriors with these parameters, drawn as from the VAE's own output."""
    output = AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(parameters))
    return retrieve_latents(output, generator, sample_mode="sample")


class OvisU1EditPipeline(OvisU1PipelineMixin, DiffusionPipeline, OvisU1LoraLoaderMixin):
    r"""
    Instruction-based image editing with Ovis-U1. Three guidance branches, as in InstructPix2Pix: the instruction with the input image (`v_c`), the input image without text (`v_nt`:
    "Generate an image." plus the image's latents as context tokens), and neither (`v_nb`: a white image, no
    context); `v = v_nb + image_guidance_scale * (v_nt - v_nb) + guidance_scale * (v_c - v_nt)`.

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
            Flow-matching Euler scheduler.
    """

    unconditional_prompt = UNCONDITIONAL_PROMPT

    def output_size(self, image: PIL.Image.Image) -> tuple[int, int]:
        """Default `(height, width)` of an edit of `image`."""
        return self.processor.image_processor.smart_resize(
            image.height, image.width, EDIT_SIZE_FACTOR, EDIT_MIN_PIXELS, EDIT_MAX_PIXELS
        )

    def encode_prompt(
        self,
        prompt: str | list[str],
        image: PIL.Image.Image | list[PIL.Image.Image],
        height: int | None = None,
        width: int | None = None,
        negative_prompt: str | list[str] | None = None,
        device: torch.device | None = None,
        lora_scale: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Conditions of the three guidance branches (see `encode_condition`): the instruction with the image, then the
        negative prompt (default "Generate an image.") with the image (no text) and with a white image (no both).
        `image` (one per prompt) is resized to the output size first, as `__call__` does; the size defaults as there.

        Returns:
            `(prompt_embeds, prompt_embeds_mask, negative_prompt_embeds, negative_prompt_embeds_mask)`: the
            conditional rows `(batch, length, 2 * hidden)` and the unconditional rows `(2 * batch, length, ...)`
            stacked `(no text, no both)`, left padded to one length, with their boolean masks. Pass them to `__call__`
            (with the same image and size) to reuse them across calls and seeds.
        """
        device = device or self._execution_device
        images, prompts = self.check_inputs(image, prompt, negative_prompt)
        height, width = self.edit_size(images, height, width)
        images = [i.resize((width, height), resample=PIL.Image.Resampling.BICUBIC) for i in images]
        negative = self.unconditional_prompt if negative_prompt is None else negative_prompt
        negative = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
        texts = [p.strip() for p in prompts] + negative + negative
        seen = [self.condition_image(image, width, height) for image in images]
        white = self.condition_image(PIL.Image.new("RGB", (width, height), (255, 255, 255)), width, height)
        condition, mask = self.encode_condition(texts, seen + seen + [white] * len(prompts), device, lora_scale)
        n = len(prompts)
        return condition[:n], mask[:n], condition[n:], mask[n:]

    def edit_size(self, images: list[PIL.Image.Image], height: int | None, width: int | None) -> tuple[int, int]:
        """The output `(height, width)`: given (floored to a multiple of 16), or the default of every image."""
        if (height is None) != (width is None):
            raise ValueError("Give both `height` and `width`, or neither.")
        if height is not None:
            return self.check_size(height, width)
        sizes = {self.output_size(i) for i in images}
        if len(sizes) > 1:
            raise ValueError(f"The images give different output sizes {sorted(sizes)}: pass `height` and `width`.")
        return sizes.pop()

    def encode_image(self, images: list[PIL.Image.Image], generator, device: torch.device) -> torch.Tensor:
        """Packed, scaled VAE latents sampled (with `generator`) from the posterior of each image (of one size, in
        multiples of 16). Each distinct image is encoded once, alone, and its posterior kept in `context_cache`."""
        cache = self.context_cache.for_model(self.vae)
        posteriors = [
            cache.get(("posterior", image_digest(image)), functools.partial(self.image_posterior, image, device))
            for image in images
        ]
        # A sample of the posterior, as the released model takes (FLUX Kontext takes its mode).
        if isinstance(generator, list):
            latents = torch.cat([sample_posterior(p.to(device), g) for p, g in zip(posteriors, generator)])
        else:
            latents = sample_posterior(torch.cat(posteriors).to(device), generator)
        return self.pack_vae_latents(latents)

    def check_inputs(
        self, image, prompt, negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None, masks=(None, None),
        **common,
    ) -> tuple[list, list[str] | None]:
        if image is None:
            raise ValueError("`image` is required: the image to edit.")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass `prompt` or `prompt_embeds`, not both.")
        if prompt_embeds is not None:
            self.check_embeds(prompt_embeds, "prompt_embeds", mask=masks[0])
            if negative_prompt_embeds is None:
                raise ValueError("`prompt_embeds` need `negative_prompt_embeds` (both from `encode_prompt`).")
            self.check_embeds(negative_prompt_embeds, "negative_prompt_embeds", 2 * len(prompt_embeds), masks[1])
            prompts, count = None, len(prompt_embeds)
        else:
            if negative_prompt_embeds is not None:
                raise ValueError("`negative_prompt_embeds` need `prompt_embeds`.")
            prompts = self.check_prompts(prompt)
            count = len(prompts)
        if negative_prompt is not None:
            if prompt_embeds is not None:
                raise ValueError("`negative_prompt` is in `negative_prompt_embeds` already.")
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if (
                not isinstance(negatives, list)
                or (not isinstance(negative_prompt, str) and len(negatives) != count)
                or not all(isinstance(p, str) for p in negatives)
            ):
                raise ValueError("`negative_prompt` must be a string or a list of strings as long as `prompt`.")
        images = image if isinstance(image, list) else [image]
        if len(images) != count:
            raise ValueError(f"Got {len(images)} images but {count} prompts: give one image per prompt.")
        image_processor = self.processor.image_processor
        # Any PIL mode, array or tensor layout the image processor accepts; converted to RGB as it does.
        images = [image_processor.convert_to_rgb(image_processor.to_pil_image(i)) for i in images]
        if common:
            self.check_common_inputs(**common)
        return images, prompts

    @property
    def image_guidance_scale(self):
        return self._image_guidance_scale

    @property
    def do_classifier_free_guidance(self):
        """The three branches always run; the scales weigh them."""
        return True

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: PIL.Image.Image | list[PIL.Image.Image],
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 6.0,
        image_guidance_scale: float = 1.5,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[OvisU1PipelineMixin, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        attention_kwargs: dict[str, Any] | None = None,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds_mask: torch.Tensor | None = None,
        sigmas: list[float] | None = None,
    ):
        r"""
        Edits images following instructions.

        Args:
            image (`PIL.Image.Image` or `list[PIL.Image.Image]`):
                The image(s) to edit, one per prompt (arrays and tensors as [`OvisU1ImageProcessor`] takes them; any
                mode is converted to RGB, transparency dropped, as the released model does).
            prompt (`str` or `list[str]`, *optional*):
                The editing instruction(s); or pass `prompt_embeds`.
            num_inference_steps (`int`, defaults to 50):
                Number of Euler steps.
            guidance_scale (`float`, defaults to 6.0):
                Text guidance: how strongly to follow the instruction.
            image_guidance_scale (`float`, defaults to 1.5):
                Image guidance: how strongly to stay close to the input image.
            height (`int`, *optional*):
                Output height, given together with `width`. By default, as the released model: the input's size
                through `smart_resize(height, width, factor=32, min_pixels=3136, max_pixels=1003520)` (its aspect
                ratio, sides rounded to multiples of 32, scaled to at most about 1 megapixel and at least 56 x 56);
                e.g. 768 x 512 stays 768 x 512 and 2048 x 1536 becomes 1152 x 864. A given size is at most
                `MAX_IMAGE_SIZE` (1792, the largest image size of the released model) and is floored to a multiple of
                16. The input is resized to the output size first (without keeping its aspect ratio).
            width (`int`, *optional*):
                Output width; see `height`.
            num_images_per_prompt (`int`, defaults to 1):
                Edits per prompt.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Random generator(s) of the input image's VAE latent sample and of the initial noise.
            latents (`torch.Tensor`, *optional*):
                Initial noise, unpacked `(batch, latent_channels, height / 8, width / 8)` or packed.
            output_type (`str`, defaults to `"pil"`):
                `"pil"`, `"np"`, `"pt"` or `"latent"` (packed latents).
            return_dict (`bool`, defaults to `True`):
                Whether to return an [`~pipelines.ImagePipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, *optional*):
                Called after each step as `callback_on_step_end(pipe, step, timestep, callback_kwargs)`; may return a
                dict with new tensors among those it was given, and may change `pipe._guidance_scale` and
                `pipe._image_guidance_scale` for the steps left.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`):
                Tensors passed in `callback_kwargs`: `"latents"`, and `"prompt_embeds"` / `"prompt_embeds_mask"`, the
                conditions of every branch stacked `(conditional, no text, no both)` along the batch.
            attention_kwargs (`dict`, *optional*):
                Passed to the transformer's attention; `{"scale": s}` weighs the loaded LoRA layers (of the transformer
                and the text encoder) by `s` for this call.
            negative_prompt (`str` or `list[str]`, *optional*):
                Text of the two unconditional branches (with and without the image); defaults to the released
                "Generate an image.".
            prompt_embeds (`torch.Tensor`, *optional*):
                Conditional rows from [`~OvisU1EditPipeline.encode_prompt`] (same image and size), instead of `prompt`;
                needs `negative_prompt_embeds`.
            prompt_embeds_mask (`torch.Tensor`, *optional*):
                Their mask (1 for tokens, 0 for padding); all ones when not given.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                The unconditional rows `(2 * batch, ...)` from `encode_prompt`, stacked `(no text, no both)`.
            negative_prompt_embeds_mask (`torch.Tensor`, *optional*):
                Their mask.
            sigmas (`list[float]`, *optional*):
                A custom decreasing schedule of noise levels in (0, 1] (0 is appended), shifted like the default one
                when the scheduler shifts; it sets the number of steps.

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the edited images.
        """
        if sigmas is not None and isinstance(sigmas, (list, tuple, np.ndarray)):
            num_inference_steps = len(sigmas)
        images, prompts = self.check_inputs(
            image,
            prompt,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            (prompt_embeds_mask, negative_prompt_embeds_mask),
            num_inference_steps=num_inference_steps,
            guidance_scales={"guidance_scale": guidance_scale, "image_guidance_scale": image_guidance_scale},
            num_images_per_prompt=num_images_per_prompt,
            output_type=output_type,
            callback_inputs=callback_on_step_end_tensor_inputs,
            sigmas=sigmas,
        )
        height, width = self.edit_size(images, height, width)
        self._guidance_scale = guidance_scale
        self._image_guidance_scale = image_guidance_scale
        self._interrupt = False
        self._current_timestep = None
        self._attention_kwargs = attention_kwargs
        lora_scale = (attention_kwargs or {}).get("scale")
        device = self._execution_device
        batch_size = len(images) * num_images_per_prompt
        self.check_batch(batch_size, height, width, generator, latents)

        # 1. The input, resized to the output size, seen by the language model and (as context tokens) the MMDiT.
        images = [i.resize((width, height), resample=PIL.Image.Resampling.BICUBIC) for i in images]
        if prompt_embeds is None:
            prompt_embeds, prompt_embeds_mask, negative_prompt_embeds, negative_prompt_embeds_mask = self.encode_prompt(
                prompts, images, height, width, negative_prompt, device, lora_scale
            )
        n = len(images)
        if negative_prompt_embeds_mask is None:
            negative_prompt_embeds_mask = [None, None]
        else:
            negative_prompt_embeds_mask = [negative_prompt_embeds_mask[:n], negative_prompt_embeds_mask[n:]]
        condition, mask = self.stack_conditions(
            [
                (prompt_embeds, prompt_embeds_mask),
                (negative_prompt_embeds[:n], negative_prompt_embeds_mask[0]),
                (negative_prompt_embeds[n:], negative_prompt_embeds_mask[1]),
            ],
            device,
        )
        tokens, pooled, refined_mask = self.refine(condition, mask, lora_scale)
        tokens, pooled, refined_mask, condition, mask = (
            x.repeat_interleave(num_images_per_prompt, dim=0) for x in (tokens, pooled, refined_mask, condition, mask)
        )

        fitted = [self.processor.image_processor.fit_image(i, width, height) for i in images]
        fitted = [i for i in fitted for _ in range(num_images_per_prompt)]
        context = self.encode_image(fitted, generator, device).to(self.transformer.dtype)
        # The no-both branch has no context: its rows are masked out entirely (or left out, in a call of its own).
        context_mask = torch.ones(3, *context.shape[:2], dtype=torch.bool, device=device)
        context_mask[2] = False
        grid_h, grid_w = self.token_grid(height, width)

        # 2. Latents and schedule (the shift counts the noise tokens only).
        latents = self.prepare_latents(batch_size, height, width, self.transformer.dtype, device, generator, latents)
        scheduler = self.call_scheduler()
        timesteps = self.timesteps(num_inference_steps, latents.shape[1], device, scheduler, sigmas)

        # 3. Denoise with the three branches. The scales are read at every step: a step callback may change them.
        def combine(velocity):
            cond, no_text, no_both = velocity
            return (
                no_both + self.image_guidance_scale * (no_text - no_both) + self.guidance_scale * (cond - no_text)
            )

        branches = dict(
            img_ids=self.latent_ids(grid_h, grid_w, 0, device),
            encoder_hidden_states=tokens,
            pooled_projections=pooled,
            encoder_attention_mask=refined_mask,
            context_hidden_states=context.repeat(3, 1, 1),
            context_ids=self.latent_ids(grid_h, grid_w, 1, device),
            context_attention_mask=context_mask.flatten(0, 1),
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

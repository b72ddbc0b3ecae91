# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""Ovis-U1 instruction-based image editing pipeline."""

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
from .pipeline_ovis_u1 import UNCONDITIONAL_PROMPT, OvisU1PipelineMixin


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


class OvisU1EditPipeline(OvisU1PipelineMixin, DiffusionPipeline, OvisU1LoraLoaderMixin):
    r"""
    Instruction-based image editing with Ovis-U1. Three guidance branches share one transformer call per step, as
    in InstructPix2Pix: the instruction with the input image (`v_c`), the input image without text (`v_nt`:
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
        prompt: list[str],
        images: list[PIL.Image.Image],
        height: int,
        width: int,
        device: torch.device,
        lora_scale: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditions of the three branches, stacked `(conditional, no text, no both)` along the batch."""
        texts = [p.strip() for p in prompt] + [self.unconditional_prompt] * (2 * len(prompt))
        seen = [self.condition_image(image, width, height) for image in images]
        white = self.condition_image(PIL.Image.new("RGB", (width, height), (255, 255, 255)), width, height)
        return self.encode_condition(texts, seen + seen + [white] * len(prompt), device, lora_scale)

    def encode_image(self, images: list[PIL.Image.Image], generator, device: torch.device) -> torch.Tensor:
        """Packed, scaled VAE latents sampled (with `generator`) from the posterior of each image."""
        pixels = np.stack([np.asarray(image, dtype=np.float32) for image in images]) / 127.5 - 1.0
        pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device=device, dtype=self.vae.dtype)
        if isinstance(generator, list):
            latents = torch.cat(
                [self.vae.encode(pixels[i : i + 1]).latent_dist.sample(g) for i, g in enumerate(generator)]
            )
        else:
            latents = self.vae.encode(pixels).latent_dist.sample(generator)
        shift = self.vae.config.shift_factor or 0.0
        return self.pack_latents((latents - shift) * self.vae.config.scaling_factor)

    def check_inputs(self, image, prompt, **common) -> tuple[list, list[str]]:
        if image is None:
            raise ValueError("`image` is required: the image to edit.")
        prompts = self.check_prompts(prompt)
        images = image if isinstance(image, list) else [image]
        if len(images) != len(prompts):
            raise ValueError(f"Got {len(images)} images but {len(prompts)} prompts: give one image per prompt.")
        image_processor = self.processor.image_processor
        # Any PIL mode, array or tensor layout the image processor accepts; converted to RGB as it does.
        images = [image_processor.convert_to_rgb(image_processor.to_pil_image(i)) for i in images]
        self.check_common_inputs(**common)
        return images, prompts

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: PIL.Image.Image | list[PIL.Image.Image],
        prompt: str | list[str],
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
    ):
        r"""
        Edits images following instructions.

        Args:
            image (`PIL.Image.Image` or `list[PIL.Image.Image]`):
                The image(s) to edit, one per prompt (arrays and tensors as [`OvisU1ImageProcessor`] takes them; any
                mode is converted to RGB, transparency dropped, as the released model does).
            prompt (`str` or `list[str]`):
                The editing instruction(s).
            num_inference_steps (`int`, defaults to 50):
                Number of Euler steps.
            guidance_scale (`float`, defaults to 6.0):
                Text guidance: how strongly to follow the instruction.
            image_guidance_scale (`float`, defaults to 1.5):
                Image guidance: how strongly to stay close to the input image.
            height (`int`, *optional*):
                Output height; defaults to the input's aspect ratio at about 1 megapixel in multiples of 32. A given
                size is at most `MAX_IMAGE_SIZE` (1792, the largest image size of the released model) and is floored
                to a multiple of 16. The input is resized to the output size first.
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
                dict with new `latents`.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`):
                Tensors passed in `callback_kwargs`.
            attention_kwargs (`dict`, *optional*):
                Passed to the transformer's attention; `{"scale": s}` weighs the loaded LoRA layers (of the transformer
                and the text encoder) by `s` for this call.

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the edited images.
        """
        images, prompts = self.check_inputs(
            image,
            prompt,
            num_inference_steps=num_inference_steps,
            guidance_scales={"guidance_scale": guidance_scale, "image_guidance_scale": image_guidance_scale},
            num_images_per_prompt=num_images_per_prompt,
            output_type=output_type,
            callback_inputs=callback_on_step_end_tensor_inputs,
        )
        if (height is None) != (width is None):
            raise ValueError("Give both `height` and `width`, or neither.")
        if height is None:
            sizes = {self.output_size(i) for i in images}
            if len(sizes) > 1:
                raise ValueError(f"The images give different output sizes {sorted(sizes)}: pass `height` and `width`.")
            height, width = sizes.pop()
        else:
            height, width = self.check_size(height, width)
        self._interrupt = False
        self._current_timestep = None
        self._attention_kwargs = attention_kwargs
        lora_scale = (attention_kwargs or {}).get("scale")
        device = self._execution_device
        batch_size = len(prompts) * num_images_per_prompt
        self.check_batch(batch_size, height, width, generator, latents)

        # 1. The input, resized to the output size, seen by the language model and (as context tokens) the MMDiT.
        images = [i.resize((width, height), resample=PIL.Image.Resampling.BICUBIC) for i in images]
        condition, mask = self.encode_prompt(prompts, images, height, width, device, lora_scale)
        tokens, pooled, mask = self.refine(condition, mask)
        tokens, pooled, mask = (x.repeat_interleave(num_images_per_prompt, dim=0) for x in (tokens, pooled, mask))

        fitted = [self.processor.image_processor.fit_image(i, width, height) for i in images]
        fitted = [i for i in fitted for _ in range(num_images_per_prompt)]
        context = self.encode_image(fitted, generator, device).to(self.transformer.dtype)
        # The no-both branch has no context: its rows are masked out entirely.
        context_mask = torch.ones(3, *context.shape[:2], dtype=torch.bool, device=device)
        context_mask[2] = False
        grid_h, grid_w = self.token_grid(height, width)

        # 2. Latents and schedule (the shift counts the noise tokens only).
        latents = self.prepare_latents(batch_size, height, width, self.transformer.dtype, device, generator, latents)
        scheduler = self.call_scheduler()
        timesteps = self.timesteps(num_inference_steps, latents.shape[1], device, scheduler)

        # 3. Denoise: the three branches in one transformer call per step.
        def combine(velocity):
            cond, no_text, no_both = velocity
            return no_both + image_guidance_scale * (no_text - no_both) + guidance_scale * (cond - no_text)

        branches = dict(
            img_ids=self.latent_ids(grid_h, grid_w, 0, device),
            encoder_hidden_states=tokens,
            pooled_projections=pooled,
            encoder_attention_mask=mask,
            context_hidden_states=context.repeat(3, 1, 1),
            context_ids=self.latent_ids(grid_h, grid_w, 1, device),
            context_attention_mask=context_mask.flatten(0, 1),
        )
        latents = self.denoise(
            latents, timesteps, branches, combine, callback_on_step_end, callback_on_step_end_tensor_inputs, scheduler
        )

        image = self.decode(latents, height, width, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
Checks a converted folder against the released weights: the folder is loaded as users load it (`from_pretrained`),
the reference is built from the released tensors in memory (mapped through the key map, no file written), and both
run the same small synthetic inputs. One model is held at a time.
"""

import gc
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from ..modeling import OvisU1Config, OvisU1ForConditionalGeneration, OvisU1Processor
from ..pipelines import OvisU1Transformer2DModel
from .key_map import TEXT_ENCODER, TRANSFORMER, VAE, Plan, relayout
from .source import ConversionError, ReleasedCheckpoint


# The max error accepted, relative to the largest reference value, per computation dtype. Both sides run the same code
# on the same values, so the error is 0 unless a tensor was changed on the way.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def _released_state(checkpoint: ReleasedCheckpoint, plan: Plan, component: str, width: int, dtype) -> dict:
    state = {}
    with checkpoint.open() as reader:
        for mapping in plan.by_component[component]:
            tensors = relayout(mapping, reader.get(mapping.source), width)
            for target, tensor in zip(mapping.targets, tensors, strict=True):
                state[target] = (tensor.to(dtype) if tensor.is_floating_point() else tensor).clone()
    return state


def _load_reference(cls, config, state: dict):
    with torch.device("meta"):
        model = cls.from_config(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _max_error(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    return float((actual.float() - expected.float()).abs().max()), float(expected.float().abs().max())


def _understanding_inputs(config: OvisU1Config) -> dict:
    vision = config.vision_config
    stride = vision.hidden_stride
    # One image whose grid has partial windows at its bottom/right edges, so windowed attention is exercised.
    side = stride * (vision.window_size // (vision.patch_size * stride) + 1)
    generator = torch.Generator().manual_seed(0)
    rows = side * side
    pixel_values = torch.randn(rows, vision.num_channels * vision.patch_size**2, generator=generator)
    start, end = config.visual_indicator_token_ids[:2]
    text = [i % config.text_config.vocab_size for i in range(3, 9)]
    ids = text[:3] + [start] + [config.image_token_id] * (rows // stride**2) + [end] + text[3:]
    return dict(input_ids=torch.tensor([ids]), pixel_values=pixel_values, grid_thws=torch.tensor([[1, side, side]]))


def _transformer_inputs(config: dict, dtype) -> dict:
    generator = torch.Generator().manual_seed(0)

    def grid(h, w, index):
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        return torch.stack([torch.full_like(rows, index), rows, cols], -1).reshape(-1, 3).float()

    channels = config["in_channels"]
    inputs = dict(
        hidden_states=torch.randn(1, 6, channels, generator=generator, dtype=dtype),
        timestep=torch.tensor([0.6], dtype=dtype),
        img_ids=grid(2, 3, 0),
        encoder_hidden_states=torch.randn(1, 5, config["joint_attention_dim"], generator=generator, dtype=dtype),
        context_hidden_states=torch.randn(1, 4, channels, generator=generator, dtype=dtype),
        context_ids=grid(2, 2, 1),
    )
    if config["guidance_embeds"]:
        inputs["guidance"] = torch.tensor([4.0], dtype=dtype)
    return inputs


def _compare(name: str, run, load_reference, load_converted, errors: dict, dtype) -> None:
    reference = load_reference()
    with torch.no_grad():
        expected = run(reference)
    del reference
    gc.collect()
    converted = load_converted()
    with torch.no_grad():
        actual = run(converted)
    del converted
    gc.collect()
    error, scale = _max_error(actual, expected)
    errors[name] = error
    if not error <= TOLERANCE.get(dtype, 2e-2) * max(1.0, scale):
        raise ConversionError(
            f"Verification failed: the converted {name} differs from the released weights' by up to {error:.3g}."
        )


def verify_conversion(folder, checkpoint: ReleasedCheckpoint, plan: Plan, translated, format: str, dtypes) -> dict:
    """
    Returns the max absolute error of each check (understanding logits; with the diffusers format also one
    transformer step and one VAE decode) and raises ConversionError when one exceeds the tolerance.
    """
    folder = Path(folder)
    width = translated.decoder_width
    encoder_folder = folder / TEXT_ENCODER if format == "diffusers" else folder
    processor_folder = folder / "processor" if format == "diffusers" else folder
    errors = {}

    processor = OvisU1Processor.from_pretrained(processor_folder)
    config = OvisU1Config.from_pretrained(encoder_folder)
    inputs = _understanding_inputs(config)
    dtype = dtypes[TEXT_ENCODER]
    _compare(
        "understanding logits",
        lambda model: model(**inputs).logits,
        lambda: OvisU1ForConditionalGeneration.from_pretrained(
            None, config=config, state_dict=_released_state(checkpoint, plan, TEXT_ENCODER, width, dtype), dtype=dtype
        ).eval(),
        lambda: OvisU1ForConditionalGeneration.from_pretrained(encoder_folder, dtype=dtype).eval(),
        errors,
        dtype,
    )
    if processor.image_token_id != config.image_token_id:
        raise ConversionError("Verification failed: the saved processor and model disagree on the image token.")
    if format != "diffusers":
        return errors

    dtype = dtypes[TRANSFORMER]
    transformer_inputs = _transformer_inputs(translated.transformer, dtype)
    _compare(
        "transformer step",
        lambda model: model(**transformer_inputs).sample,
        lambda: _load_reference(
            OvisU1Transformer2DModel,
            translated.transformer,
            _released_state(checkpoint, plan, TRANSFORMER, width, dtype),
        ),
        lambda: OvisU1Transformer2DModel.from_pretrained(folder / TRANSFORMER, dtype=dtype).eval(),
        errors,
        dtype,
    )

    dtype = dtypes[VAE]
    channels = translated.vae.get("latent_channels", 4)
    latents = torch.randn(1, channels, 4, 4, generator=torch.Generator().manual_seed(0), dtype=dtype)
    _compare(
        "vae decode",
        lambda model: model.decode(latents).sample,
        lambda: _load_reference(AutoencoderKL, translated.vae, _released_state(checkpoint, plan, VAE, width, dtype)),
        lambda: AutoencoderKL.from_pretrained(folder / VAE, dtype=dtype).eval(),
        errors,
        dtype,
    )
    return errors


__all__ = ["verify_conversion"]

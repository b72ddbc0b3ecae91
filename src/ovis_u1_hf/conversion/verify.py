# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
Checks a converted folder against the released weights, tensor by tensor, within the memory the writing takes.

Each component's saved config is rebuilt into a model on the meta device (no memory), whose state dict must name
exactly the saved tensors with their shapes: the folder loads with `from_pretrained`. Then every saved tensor is read
lazily from its shard (`safe_open`, memory-mapped) and compared with the released tensor it comes from, mapped through
the key map as the writer maps it: they must be equal, bit for bit. At most one released tensor, its re-laid-out parts
and one saved tensor are held at a time, never a whole model: a model-sized forward check would need two copies of
the 3.6B model in memory, and a bit-exact tensor match implies the same outputs for the same code and config.
"""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from huggingface_hub.utils import tqdm
from safetensors import safe_open

from ..modeling import OvisU1Config, OvisU1ForConditionalGeneration, OvisU1Processor
from ..pipelines import OvisU1Transformer2DModel
from .key_map import TEXT_ENCODER, TRANSFORMER, VAE, Plan, relayout
from .source import ConversionError, ReleasedCheckpoint, listing


def _saved_files(folder: Path) -> dict[str, str]:
    """Saved tensor name -> shard file name, from the index or the single weights file of `folder`."""
    for index in folder.glob("*.safetensors.index.json"):
        return json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    weight_map = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(path, framework="pt") as handle:
            weight_map.update(dict.fromkeys(handle.keys(), path.name))
    return weight_map


def _model_from_saved_config(component: str, folder: Path) -> torch.nn.Module:
    """The component as `from_pretrained` builds it from the saved config, on the meta device."""
    with torch.device("meta"):
        if component == TEXT_ENCODER:
            return OvisU1ForConditionalGeneration._from_config(OvisU1Config.from_pretrained(folder))
        cls = OvisU1Transformer2DModel if component == TRANSFORMER else AutoencoderKL
        return cls.from_config(cls.load_config(folder))


def _check_structure(component: str, folder: Path, saved: dict[str, str], shapes: dict[str, tuple]) -> None:
    model = _model_from_saved_config(component, folder)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        expected.pop("lm_head.weight", None)  # tied: loading fills it from the embedding
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    mismatched = [
        f"{name}: {shapes[name]} saved, {expected[name]} expected"
        for name in saved
        if name in expected and shapes[name] != expected[name]
    ]
    if missing or unexpected or mismatched:
        problems = [f"missing {name}" for name in missing] + [f"unexpected {name}" for name in unexpected] + mismatched
        raise ConversionError(f"Verification failed: the {component} does not load as its config says:{listing(problems)}")


def verify_conversion(
    folders: dict[str, Path], checkpoint: ReleasedCheckpoint, plan: Plan, translated, out_dtype, processor_folder=None
) -> dict[str, float]:
    """
    Compares every saved tensor of `folders` (component name -> folder) with its released source; returns the max
    absolute difference per component (0.0: bit-exact, anything else raises) and raises ConversionError on the first
    tensor that differs or a folder whose saved config does not match its weights.
    """
    width = translated.decoder_width
    if processor_folder is not None:
        processor = OvisU1Processor.from_pretrained(processor_folder)
        config = OvisU1Config.from_pretrained(folders[TEXT_ENCODER])
        if processor.image_token_id != config.image_token_id:
            raise ConversionError("Verification failed: the saved processor and model disagree on the image token.")

    total = sum(len(mapping.targets) for component in folders for mapping in plan.by_component[component])
    errors = {}
    bar = tqdm(total=total, desc="Verifying against the released weights", unit="tensor")
    with checkpoint.open() as reader, bar:
        for component, folder in folders.items():
            folder = Path(folder)
            saved = _saved_files(folder)
            handles = {file: safe_open(folder / file, framework="pt") for file in sorted(set(saved.values()))}
            shapes = {name: tuple(handles[file].get_slice(name).get_shape()) for name, file in saved.items()}
            _check_structure(component, folder, saved, shapes)
            targets = {target for mapping in plan.by_component[component] for target in mapping.targets}
            if targets != set(saved):
                raise ConversionError(
                    f"Verification failed: the {component} holds other tensors than the conversion maps:"
                    f"{listing(targets.symmetric_difference(saved))}"
                )
            errors[component] = 0.0
            for mapping in plan.by_component[component]:
                released = relayout(mapping, reader.get(mapping.source), width)
                for target, expected in zip(mapping.targets, released, strict=True):
                    if out_dtype is not None and expected.is_floating_point():
                        expected = expected.to(out_dtype)  # the writer's cast, so equality is exact
                    actual = handles[saved[target]].get_tensor(target)
                    if actual.dtype != expected.dtype or not torch.equal(actual, expected):
                        error = float("nan")
                        if actual.shape == expected.shape:
                            error = float((actual.double() - expected.double()).abs().max())
                        raise ConversionError(
                            f"Verification failed: the converted {component} tensor {target} differs from the released "
                            f"{mapping.source} (max abs difference {error:.3g}, dtype {actual.dtype} saved, "
                            f"{expected.dtype} expected)."
                        )
                    bar.update(1)
                del released
            handles.clear()
    return errors


__all__ = ["verify_conversion"]

# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""Writing a converted folder: configs and code through the libraries' own saving paths, weights shard by shard."""

import json
import os
import re
from pathlib import Path

import torch
from diffusers import ModelMixin
from safetensors.torch import save_file
from transformers import PreTrainedModel
from transformers.utils import logging as transformers_logging


TRANSFORMERS_WEIGHTS = "model.safetensors"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
_UNITS["TIB"] = 2**40


def parse_size(size: int | str) -> int:
    """Bytes in `size`: an int, or a string such as `"5GB"`, `"500MiB"`, `"1000"`."""
    if isinstance(size, int):
        value = size
    else:
        match = _SIZE.match(str(size))
        if match is None:
            raise ValueError(f"Cannot read a size from {size!r}; use e.g. '5GB' or '500MB'.")
        value = int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])
    if value <= 0:
        raise ValueError(f"A shard size must be positive, got {size!r}.")
    return value


class ShardedSafetensorsWriter:
    """
    Writes tensors into safetensors shards of at most `max_shard_size` bytes (a bigger tensor gets a shard of its
    own) as they come, holding at most one shard in memory; `close` names the shards as transformers and diffusers do
    (`model-00001-of-00003.safetensors`, or the plain name for a single shard) and writes the index.
    """

    def __init__(self, folder: str | os.PathLike, weights_name: str, max_shard_size: int, dtype: torch.dtype | None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stem = weights_name.removesuffix(".safetensors")
        self.max_shard_size = max_shard_size
        self.dtype = dtype
        self.buffer, self.buffered_bytes, self.peak_buffered_bytes = {}, 0, 0
        self.parts, self.weight_map, self.total_size, self.total_parameters = [], {}, 0, 0
        self.names = set()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.names:
            raise ValueError(f"{name} is written twice.")
        self.names.add(name)
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        size = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffered_bytes + size > self.max_shard_size:
            self.flush()
        self.buffer[name] = tensor.contiguous()
        self.buffered_bytes += size
        self.peak_buffered_bytes = max(self.peak_buffered_bytes, self.buffered_bytes)
        self.total_size += size
        self.total_parameters += tensor.numel()

    def flush(self) -> None:
        if not self.buffer:
            return
        part = self.folder / f".{self.stem}.part{len(self.parts):05d}"
        save_file(self.buffer, part, metadata={"format": "pt"})
        self.parts.append((part, list(self.buffer)))
        self.buffer, self.buffered_bytes = {}, 0

    def close(self) -> list[str]:
        """Renames the shards to their final names and writes the index; returns the file names."""
        self.flush()
        count = len(self.parts)
        if count == 0:
            raise ValueError(f"No tensor was written to {self.folder}.")
        names = []
        for number, (part, tensor_names) in enumerate(self.parts, start=1):
            name = f"{self.stem}.safetensors" if count == 1 else f"{self.stem}-{number:05d}-of-{count:05d}.safetensors"
            part.rename(self.folder / name)
            names.append(name)
            self.weight_map.update(dict.fromkeys(tensor_names, name))
        if count > 1:
            index = {
                "metadata": {"total_parameters": self.total_parameters, "total_size": self.total_size},
                "weight_map": dict(sorted(self.weight_map.items())),
            }
            with open(self.folder / f"{self.stem}.safetensors.index.json", "w", encoding="utf-8") as f:
                f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return names


def save_without_weights(component, folder: str | os.PathLike) -> None:
    """
    What `save_pretrained` writes for a pipeline component except its weights, through the library's own saving code:
    config, generation config and remote code for a transformers model, config for a diffusers model, everything for
    the weightless components (processor, scheduler).
    """
    folder = Path(folder)
    if isinstance(component, PreTrainedModel):
        # An empty state dict makes transformers write everything but tensors: an empty weights file, removed here.
        # Its shard-writing progress bar would show an empty "0it" bar beside the converter's own: silenced.
        shown = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
        try:
            component.save_pretrained(folder, state_dict={})
        finally:
            if shown:
                transformers_logging.enable_progress_bar()
        (folder / TRANSFORMERS_WEIGHTS).unlink(missing_ok=True)
    elif isinstance(component, ModelMixin):
        component.save_config(folder)  # all that ModelMixin.save_pretrained writes besides the weights
    else:
        component.save_pretrained(folder)


__all__ = [
    "ShardedSafetensorsWriter",
    "parse_size",
    "save_without_weights",
]

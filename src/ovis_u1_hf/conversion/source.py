# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""The released Ovis-U1 checkpoint as a source: a local folder or a Hub snapshot, read lazily tensor by tensor."""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open


INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Written beside the random checkpoints that `released_layout` builds, so that a conversion of one says so.
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS.txt"
# Everything the conversion reads; the released remote code (*.py) and any pickled weights are left alone.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]


class ConversionError(ValueError):
    """The source cannot be converted as it is; the message says why (and lists the offending names)."""


class SourceUnavailableError(ConversionError):
    """A Hub source cannot be downloaded (offline, no network, not found, gated); the Hub's message says which."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: str
    shape: tuple[int, ...]
    dtype: torch.dtype


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def listing(names, limit: int = 20) -> str:
    """Names one per line (indented) for an error message, the first `limit` of them."""
    names = sorted(names)
    shown = "\n  ".join(names[:limit])
    more = f"\n  ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"\n  {shown}{more}"


class ReleasedCheckpoint:
    """
    A released checkpoint folder: `config.json`, `preprocessor_config.json`, tokenizer files and
    safetensors weights, one file or shards with `model.safetensors.index.json`.

    Opening it checks the weights without reading them: every file must be a complete safetensors file, and the
    index must list exactly the tensors the shards hold.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ConversionError(f"{self.folder} is not a folder.")
        self.config = self._read_json("config.json")
        preprocessor = self.folder / "preprocessor_config.json"
        self.preprocessor_config = self._read_json("preprocessor_config.json") if preprocessor.is_file() else None
        self.random_weights = (self.folder / RANDOM_WEIGHTS_MARKER).is_file()
        self.files = self._weight_files()
        self.tensors = self._scan()

    @classmethod
    def resolve(
        cls, source: str | os.PathLike, revision: str | None = None, cache_dir=None, token=None
    ) -> "ReleasedCheckpoint":
        """A local folder as it is, anything else as a Hub repo id fetched with `snapshot_download`."""
        if os.path.isdir(source):
            return cls(source)
        text = str(source)
        if os.path.exists(text) or text.startswith((".", "/", "~")) or text.count("/") > 1:
            raise ConversionError(f"{source} is not a folder (nor a Hub repo id such as 'AIDC-AI/Ovis-U1-3B').")
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(
                text, revision=revision, cache_dir=cache_dir, token=token, allow_patterns=DOWNLOAD_PATTERNS
            )
        except Exception as error:  # not found, gated, offline, ...: the Hub's own message says which
            raise SourceUnavailableError(f"Cannot download {text} from the Hub: {error}") from error
        return cls(folder)

    def _read_json(self, name: str) -> dict:
        path = self.folder / name
        if not path.is_file():
            raise ConversionError(f"{self.folder} has no {name}: not a released Ovis-U1 checkpoint.")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ConversionError(f"{path} is not valid JSON: {error}") from None

    def _weight_files(self) -> list[str]:
        index = self.folder / INDEX_NAME
        if index.is_file():
            self.weight_map = self._read_json(INDEX_NAME).get("weight_map")
            if not isinstance(self.weight_map, dict) or not self.weight_map:
                raise ConversionError(f"{index} has no weight_map.")
            files = sorted(set(self.weight_map.values()))
            missing = [name for name in files if not (self.folder / name).is_file()]
            if missing:
                raise ConversionError(f"{index} names shard files that are not in {self.folder}:{listing(missing)}")
            return files
        self.weight_map = None
        if (self.folder / SINGLE_NAME).is_file():
            return [SINGLE_NAME]
        pickled = sorted(p.name for p in self.folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickled:
            raise ConversionError(
                f"{self.folder} holds pickled weights ({', '.join(pickled)}): only safetensors checkpoints are "
                "converted (pickle files can run code when loaded). Convert them to safetensors first."
            )
        raise ConversionError(f"{self.folder} has no {INDEX_NAME} and no {SINGLE_NAME}.")

    def _scan(self) -> dict[str, TensorInfo]:
        tensors = {}
        for file in self.files:
            try:
                with safe_open(self.folder / file, framework="pt") as handle:
                    for name in handle.keys():
                        tensor_slice = handle.get_slice(name)
                        dtype = _SAFETENSORS_DTYPES.get(tensor_slice.get_dtype())
                        if dtype is None:
                            raise ConversionError(f"{file}: {name} has unsupported dtype {tensor_slice.get_dtype()}.")
                        if name in tensors:
                            raise ConversionError(f"{name} is stored twice: in {tensors[name].file} and {file}.")
                        tensors[name] = TensorInfo(name, file, tuple(tensor_slice.get_shape()), dtype)
            except ConversionError:
                raise
            except Exception as error:  # safetensors raises its own error type for damaged files
                raise ConversionError(
                    f"{self.folder / file} is not a complete safetensors file (truncated or damaged download?): "
                    f"{error}"
                ) from None
        if self.weight_map is not None:
            misplaced = [
                f"{name} (index: {self.weight_map.get(name)}, found in: {info.file})"
                for name, info in tensors.items()
                if self.weight_map.get(name) != info.file
            ]
            absent = [f"{name} (index: {file})" for name, file in self.weight_map.items() if name not in tensors]
            if misplaced or absent:
                raise ConversionError(f"{INDEX_NAME} does not match the shards:{listing(misplaced + absent)}")
        return tensors

    @contextmanager
    def open(self) -> Iterator["_TensorReader"]:
        """A reader that opens each shard once (memory-mapped) and reads one tensor at a time."""
        handles = {}
        try:
            yield _TensorReader(self, handles)
        finally:
            handles.clear()


class _TensorReader:
    def __init__(self, checkpoint: ReleasedCheckpoint, handles: dict):
        self.checkpoint = checkpoint
        self.handles = handles

    def get(self, name: str) -> torch.Tensor:
        info = self.checkpoint.tensors[name]
        if info.file not in self.handles:
            self.handles[info.file] = safe_open(self.checkpoint.folder / info.file, framework="pt")
        return self.handles[info.file].get_tensor(name)


__all__ = ["ConversionError", "ReleasedCheckpoint", "SourceUnavailableError", "TensorInfo"]

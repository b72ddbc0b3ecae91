# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
Where the package keeps what it builds, and what a `--model` argument names.

The cache folder is `$OVIS_U1_CACHE`, or else `ovis-u1-hf` in `$XDG_CACHE_HOME` (`~/.cache` by default). It holds
`demo/` (the random checkpoint of `ovis-u1 demo`) and `converted/` (released checkpoints converted on first use:
`converted/AIDC-AI--Ovis-U1-3B` for the Hub's). Downloads stay in the Hugging Face cache as usual.

`resolve_model` accepts a pipeline folder or Hub repo (`model_index.json`), an understanding model folder or repo
(this package's `config.json`), or a released checkpoint (`config.json` with `llm_config`), which it converts once into
the cache.
"""

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .inputs import InputError, check_weights, check_writable_folder


CACHE_ENV = "OVIS_U1_CACHE"
PIPELINE, UNDERSTANDING = "pipeline", "understanding"
DEMO_HINT = "To try ovis-u1 without downloading anything, run `ovis-u1 demo` (a small random model)."


class ModelUnavailableError(Exception):
    """The model named cannot be had: offline, no network, not on the Hub, not an Ovis-U1 model, or a released
    checkpoint that does not convert."""


class UnsupportedModelError(ModelUnavailableError, InputError):
    """The model named is not one this package loads: another model, or one that needs code of its own."""


@dataclass(frozen=True)
class ResolvedModel:
    """What to pass to `from_pretrained` (`path`: a local folder or a Hub repo id) and what it holds (`layout`:
    `"pipeline"`, a diffusers pipeline folder, or `"understanding"`, the understanding model and its processor)."""

    path: str
    layout: str


def cache_dir() -> Path:
    """The package's cache folder (not created)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ovis-u1-hf"


def check_cache_dir() -> Path:
    """The cache folder, checked to be (or be creatable as) a writable folder before anything is written into it."""
    folder = cache_dir()
    where = f"${CACHE_ENV}" if os.environ.get(CACHE_ENV) else "the cache folder"
    check_writable_folder(folder, f"{where} (set {CACHE_ENV} to change it):")
    return folder


def resolve_model(model: str, log=None) -> ResolvedModel:
    """
    The loadable form of `model`: a local folder or a Hub repo id. A released checkpoint is converted into
    `<cache>/converted/` the first time (`log`, default: print to stderr, tells what happens); later calls find the
    converted folder and need no network.

    Raises:
        ModelUnavailableError: `model` cannot be downloaded, is not an Ovis-U1 model, or is a released checkpoint
            that does not convert; the message says why.
    """
    log = log or _print_to_stderr
    if os.path.isdir(model):
        return _resolve_folder(Path(model), log)
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or os.path.exists(model):
        raise UnsupportedModelError(f"{model} is not a folder (nor a Hub repo id such as 'AIDC-AI/Ovis-U1-3B').")
    return _resolve_hub(model, log)


def _print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _is_pipeline(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


def _our_class_names() -> set[str]:
    import ovis_u1_hf

    return set(ovis_u1_hf.__all__)


def _remote_code_error(source: str, code: str, python: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{source} needs code of its own ({code}), which ovis-u1 does not run. If you trust that code, load it in "
        f"Python: {python}."
    )


def _check_pipeline_index(index: dict, source: str) -> None:
    """A pipeline folder is ours: its pipeline and components are this package's or the libraries' classes. Others
    would need `trust_remote_code`, which the command line does not pass."""
    ours = _our_class_names()
    pipeline = index.get("_class_name")
    name = pipeline[-1] if isinstance(pipeline, list) else pipeline
    python = f"DiffusionPipeline.from_pretrained({source!r}, trust_remote_code=True)"
    if name not in ("OvisU1TextToImagePipeline", "OvisU1EditPipeline"):
        if isinstance(pipeline, list) or index.get("custom_pipeline"):
            raise _remote_code_error(source, f"the pipeline {name}", python)
        raise UnsupportedModelError(f"{source} is a {name} folder, not an Ovis-U1 pipeline.")
    for component, value in index.items():
        if isinstance(value, list) and len(value) == 2 and value[1] is not None:
            library, class_name = value
            if library not in ("diffusers", "transformers") and class_name not in ours:
                raise _remote_code_error(source, f"its {component} {library}.{class_name}", python)


def _layout_of_config(config: dict, source: str = "The model") -> str:
    """`"released"` or `"understanding"`, from a config.json; an error for what this package does not load."""
    model_type = config.get("model_type")
    if model_type == "ovis_u1":
        if "llm_config" in config:
            return "released"
        if "OvisU1" in config.get("architectures", []):  # the released checkpoint's architecture name
            raise UnsupportedModelError(
                f"{source} is a released Ovis-U1 checkpoint whose config.json lacks llm_config: download it again."
            )
        return UNDERSTANDING
    auto_map = config.get("auto_map")
    if auto_map:
        code = ", ".join(sorted({str(entry).split(".")[0] for entry in auto_map.values()}))
        python = f"AutoModel.from_pretrained({source!r}, trust_remote_code=True)"
        raise _remote_code_error(source, f"{code}.py, of model type {model_type!r}", python)
    raise UnsupportedModelError(f"{source} is not an Ovis-U1 model (its model type is {model_type!r}).")


def _resolve_folder(folder: Path, log) -> ResolvedModel:
    if _is_pipeline(folder):
        _check_pipeline_index(_read_json(folder / "model_index.json"), str(folder))
        check_weights(folder)
        return ResolvedModel(str(folder), PIPELINE)
    config = folder / "config.json"
    if not config.is_file():
        raise UnsupportedModelError(
            f"{folder} holds neither model_index.json (a pipeline folder) nor config.json (an understanding model or "
            "a released checkpoint)."
        )
    layout = _layout_of_config(_read_json(config), str(folder))
    check_weights(folder)
    if layout == UNDERSTANDING:
        return ResolvedModel(str(folder), UNDERSTANDING)
    # Keyed by the folder and its files' sizes and times: a changed checkpoint is converted anew.
    stamp = [str(folder.resolve())]
    stamp += [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(folder.iterdir()) if p.is_file()]
    key = hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:12]
    return _convert_once(str(folder), _safe_name(folder.resolve().name) + "-" + key, log)


def _resolve_hub(repo_id: str, log) -> ResolvedModel:
    converted = cache_dir() / "converted" / _safe_name(repo_id.replace("/", "--"))
    if _is_pipeline(converted):
        return ResolvedModel(str(converted), PIPELINE)
    layout = _cached_hub_layout(repo_id) or _remote_hub_layout(repo_id)
    if layout == "released":
        return _convert_once(repo_id, converted.name, log)
    return ResolvedModel(repo_id, layout)


def _cached_hub_layout(repo_id: str) -> str | None:
    """The layout of a repo found in the Hugging Face cache, with no network."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str):
        return PIPELINE
    config = try_to_load_from_cache(repo_id, "config.json")
    return _layout_of_config(_read_json(Path(config)), repo_id) if isinstance(config, str) else None


def _remote_hub_layout(repo_id: str) -> str:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        files = {sibling.rfilename for sibling in HfApi().model_info(repo_id).siblings or []}
        if "model_index.json" in files:
            return PIPELINE
        if "config.json" not in files:
            raise ModelUnavailableError(f"{repo_id} on the Hub has no model_index.json nor config.json.")
        return _layout_of_config(_read_json(Path(hf_hub_download(repo_id, "config.json"))), repo_id)
    except ModelUnavailableError:
        raise
    except OfflineModeIsEnabled:
        reason = "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
    except RepositoryNotFoundError:
        reason = "no such repo on the Hub (if it is private or gated, log in with `hf auth login` or set HF_TOKEN)"
    except Exception as error:  # no network, DNS, proxy, timeout, server error: the message says which
        reason = f"the Hugging Face Hub cannot be reached ({type(error).__name__}: {error})"
    raise ModelUnavailableError(f"Cannot download {repo_id}: {reason}.\n{DEMO_HINT}")


def _convert_once(source: str, name: str, log) -> ResolvedModel:
    from .conversion import ConversionError, SourceUnavailableError, convert
    from .conversion.staging import remove_stale

    output = cache_dir() / "converted" / name
    if _is_pipeline(output):
        return ResolvedModel(str(output), PIPELINE)
    check_cache_dir()
    # Only conversions write into converted/: the staging folders of killed ones go, whatever output they were for.
    for path in remove_stale(output.parent):
        log(f"Removed {path}, left by a conversion that was killed.")
    log(f"{source} is a released checkpoint: converting it once into {output} (later runs use that folder).")
    try:
        report = convert(output, source, force=True)  # force: replaces a leftover without model_index.json
    except SourceUnavailableError as error:
        raise ModelUnavailableError(f"{error}\n{DEMO_HINT}") from None
    except ConversionError as error:
        raise ModelUnavailableError(f"{source} does not convert: {error}") from None
    log(report.summary())
    return ResolvedModel(str(output), PIPELINE)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelUnavailableError(f"Cannot read {path}: {error}") from None


__all__ = [
    "CACHE_ENV",
    "ModelUnavailableError",
    "ResolvedModel",
    "UnsupportedModelError",
    "cache_dir",
    "check_cache_dir",
    "resolve_model",
]

# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
What a user types or uploads, checked before anything expensive runs: image files, prompts, output paths, folders, the
device and the attention implementation. The command line and the app share these checks; each names the field the
way its user sees it, and every message says what is wrong and what to do.
"""

import os
import tempfile
import warnings
from pathlib import Path

import PIL.Image


class InputError(ValueError):
    """A bad input: the message names it and says what to do. The command line exits with status 2 on it; the app
    shows it in the page."""


def open_image(path, what: str) -> PIL.Image.Image:
    """
    The image file at `path`, fully decoded, so that a truncated file fails here rather than in the vision encoder.
    `what` names it in messages (`--image cat.png`, `The image cat.png`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} does not exist: check the path.")
    if path.is_dir():
        raise InputError(f"{what} is a folder: give an image file.")
    # PIL only warns between MAX_IMAGE_PIXELS and twice that; either way the image is too large to be sensible input.
    with warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        try:
            image = PIL.Image.open(path)
            image.load()
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
            raise InputError(f"{what} is too large to open safely ({error}): resize it first.") from None
        except PIL.UnidentifiedImageError:
            raise InputError(f"{what} is not an image file PIL can read: give a PNG, JPEG, WebP, ... file.") from None
        except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for truncated and damaged files
            raise InputError(f"{what} is truncated or damaged ({error}): save or download it again.") from None
    return image


def check_text(text: str | None, what: str, hint: str) -> str:
    """`text` unless it is empty or only whitespace; `hint` says what to type."""
    if text is None or not str(text).strip():
        raise InputError(f"{what} is empty: {hint}")
    return text


def check_image_size(args) -> None:
    """`--height` / `--width` (either may be unset), within the pipelines' bounds, before any model loads."""
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None:
            check_image_side(value, f"--{name}")


def check_image_side(value, what: str, multiple: int = 1) -> int:
    """
    One side of an output image in pixels, as an int: a whole number from 16 to `MAX_IMAGE_SIZE` and, where `multiple`
    is given, a multiple of it (the pipelines floor other sizes to multiples of 16, warning in the log only). `what`
    names it in messages (`--height`, `Height`).
    """
    from .pipelines import MAX_IMAGE_SIZE

    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a number field's value
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{what} must be a whole number of pixels, got {value}.")
    # 16: one latent patch (the VAE's 8x downsampling, then 2x2 packing).
    if not 16 <= value <= MAX_IMAGE_SIZE:
        raise InputError(f"{what} must be between 16 and {MAX_IMAGE_SIZE}, got {value}.")
    if value % multiple:
        lower = value // multiple * multiple
        raise InputError(f"{what} must be a multiple of {multiple}, got {value}: use {lower} or {lower + multiple}.")
    return value


def image_format(path) -> str:
    """The PIL format that saves to `path`, by its extension."""
    extension = Path(path).suffix.lower()
    image_format = PIL.Image.registered_extensions().get(extension)
    if image_format is None or image_format not in PIL.Image.SAVE:
        known = sorted(ext for ext, fmt in PIL.Image.registered_extensions().items() if fmt in PIL.Image.SAVE)
        common = [ext for ext in (".png", ".jpg", ".webp") if ext in known]
        raise InputError(
            f"cannot write images as {extension or 'files without an extension'} ({path}): "
            f"end the name with {', '.join(common)} or another extension PIL saves."
        )
    return image_format


def check_writable_folder(folder, what: str, must_exist: bool = False) -> None:
    """`folder` is a folder this process can write into, or (unless `must_exist`) can be created in one."""
    folder = Path(folder)
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists() or parent == parent.parent)
    if not existing.is_dir():
        raise InputError(f"{what} {folder}: {existing} is a file, not a folder: choose another path.")
    if existing != folder and must_exist:
        raise InputError(f"{what} {folder} does not exist: create it first or choose another path.")
    try:  # a real write: permissions, read-only file systems and quotas all show here
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise InputError(f"{what} {folder} is not writable ({error.strerror}): choose another path.") from None


def output_paths(output: str, count: int) -> list[Path]:
    """The files that `count` images saved as `output` go to (numbered when several; PNG without an extension),
    checked before anything is generated."""
    path = Path(output)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    image_format(path)
    paths = [path] if count == 1 else [path.with_name(f"{path.stem}-{index}{path.suffix}") for index in range(count)]
    for target in paths:
        if target.is_dir():
            raise InputError(f"--output {target} is a folder: give a file name such as {target / 'image.png'}.")
    check_writable_folder(path.parent, "the folder of --output", must_exist=True)
    return paths


def save_image_atomically(image: PIL.Image.Image, path: Path) -> None:
    """Saves into a temporary file beside `path`, then renames it: an interrupted save leaves no partial image."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent or ".")
    try:
        with os.fdopen(handle, "wb") as file:
            image.save(file, format=image_format(path))
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def check_device(device: str, offload: bool = False) -> str:
    """`device` (a torch device string) exists on this machine."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device} is not a device torch knows: use cpu, cuda, cuda:1, mps, ...") from None
    if parsed.type == "cpu":
        if offload:
            raise InputError("--offload keeps models on the CPU until they run on a GPU: drop it, or use --device cuda.")
        return device
    backend = getattr(torch, parsed.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise InputError(f"--device {device}: no {parsed.type} device is available here: use --device cpu.")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if parsed.index is not None and parsed.index >= count:
        raise InputError(f"--device {device}: this machine has {count} {parsed.type} device(s), numbered from 0.")
    return device


def check_attention(attn: str | None) -> None:
    """The attention implementation `attn` can run here."""
    if attn == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise InputError(
                "--attn flash_attention_2 needs flash-attn and a CUDA GPU (pip install \"ovis-u1-hf[flash]\"): "
                "use --attn sdpa instead."
            )


def check_weights(folder) -> None:
    """Every safetensors file under `folder` has a whole header and data (a cheap read of each header): a truncated
    download is named here rather than failing deep inside loading."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(Path(folder).rglob("*.safetensors")):
        try:
            with safe_open(path, framework="np"):
                pass
        except (SafetensorError, OSError) as error:
            raise InputError(
                f"The weights file {path} is truncated or damaged ({error}): download or convert it again."
            ) from None


__all__ = [
    "InputError",
    "check_attention",
    "check_device",
    "check_image_side",
    "check_image_size",
    "check_text",
    "check_weights",
    "check_writable_folder",
    "image_format",
    "open_image",
    "output_paths",
    "save_image_atomically",
]

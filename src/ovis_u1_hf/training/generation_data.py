# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
Training data of the generation LoRA: an image folder with a `metadata.jsonl`, checked line by line before any model
loads; target sizes (a square, aspect-ratio buckets, or the edit pipeline's size rule); batches within one size.

Text-to-image, one line per image, as the `datasets` ImageFolder reads it:

    {"file_name": "cat.png", "text": "a cat wearing a red scarf"}

Editing, one line per (source, edited, instruction) triple:

    {"source_file": "cat.png", "file_name": "cat_blue_scarf.png", "text": "make the scarf blue"}

Paths are relative to the folder (absolute paths work too); `text` is the caption or the instruction.
"""

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..inputs import InputError


METADATA_FILE = "metadata.jsonl"
TEXT_TO_IMAGE = "text-to-image"
EDIT = "edit"
# Sides of generated sizes are multiples of this: the edit pipeline's rule (SPEC 11), and twice the packed-latent
# multiple of 16.
SIZE_MULTIPLE = 32
# EXIF orientations that swap the width and height of the stored pixels.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


class DataError(InputError):
    """A bad dataset: the message names the file and line and says what to do."""


@dataclass(frozen=True)
class GenerationExample:
    """One training example: the `line` of `metadata.jsonl` it comes from, the target `image`, its `text` (caption or
    instruction) and, for edits, the `source` image; `size` is the `(width, height)` of the image that decides the
    training size (the source for edits, the target otherwise), upright as its EXIF orientation shows it."""

    line: int
    image: Path
    text: str
    source: Path | None
    size: tuple[int, int]


def oriented_size(image: PIL.Image.Image) -> tuple[int, int]:
    """`(width, height)` of an opened (not decoded) image once its EXIF orientation is applied."""
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112)
    except Exception:  # a damaged EXIF block: the pixels decide, as when the image is loaded
        orientation = None
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


def _check_image(where: str, folder: Path, value, key: str) -> tuple[Path, tuple[int, int]]:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: `{key}` must be the path of an image file, got {value!r}.")
    path = folder / value
    if not path.exists():
        raise DataError(f"{where}: `{key}` {path} does not exist: check the path (relative to {folder}).")
    if not path.is_file():
        raise DataError(f"{where}: `{key}` {path} is not a file: give an image file.")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        try:
            with PIL.Image.open(path) as image:
                size = oriented_size(image)
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
            raise DataError(f"{where}: `{key}` {path} is too large to open safely: resize it first.") from None
        except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for unreadable and damaged files
            raise DataError(f"{where}: `{key}` {path} is not an image PIL can read ({error}).") from None
    return path, size


def load_generation_metadata(
    folder: str | Path, task: str | None = None, caption_column: str = "text"
) -> tuple[str, list[GenerationExample]]:
    """
    Reads and checks `folder/metadata.jsonl` before any model loads: every line a JSON object with an image
    `file_name`, a non-empty caption in `caption_column` and, for edits, a `source_file`; every image present and
    readable (its header: a file damaged further in fails when it is loaded, with its name and line). The first
    problem raises a [`DataError`] naming the file and line.

    Args:
        folder: the image folder.
        task: `"text-to-image"` or `"edit"`; by default, edit when the lines have `source_file`.
        caption_column: the key of the caption (text-to-image) or instruction (edit).

    Returns:
        `(task, examples)`.
    """
    folder = Path(folder)
    metadata = folder / METADATA_FILE
    if not folder.is_dir():
        raise DataError(f"--data {folder} is not a folder: give the folder that holds {METADATA_FILE} and the images.")
    if not metadata.is_file():
        raise DataError(f"{metadata} does not exist: the data folder needs a {METADATA_FILE} (one JSON object per line).")
    if task not in (None, TEXT_TO_IMAGE, EDIT):
        raise DataError(f"The task must be {TEXT_TO_IMAGE!r} or {EDIT!r}, got {task!r}.")
    examples = []
    try:
        lines = metadata.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is not part of line 1
    except UnicodeDecodeError as error:
        raise DataError(f"{metadata} is not UTF-8 text ({error}).") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{metadata}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not valid JSON ({error.msg} at column {error.colno}).") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: each line must be a JSON object, got {type(record).__name__}.")
        line_task = EDIT if "source_file" in record else TEXT_TO_IMAGE
        if task is None:
            task = line_task
        elif line_task != task:
            expected = "needs a `source_file` (an edit triple)" if task == EDIT else "has a `source_file`"
            raise DataError(f"{where}: this line {expected}, unlike the {task} lines before it.")
        text = record.get(caption_column)
        if not isinstance(text, str) or not text.strip():
            what = "instruction" if task == EDIT else "caption"
            raise DataError(f"{where}: the {what} `{caption_column}` is missing or empty: write one.")
        image, size = _check_image(where, folder, record.get("file_name"), "file_name")
        source = None
        if task == EDIT:
            source, size = _check_image(where, folder, record.get("source_file"), "source_file")
        examples.append(GenerationExample(number, image, text, source, size))
    if not examples:
        raise DataError(f"{metadata} holds no examples.")
    return task, examples


def check_buckets(buckets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`(height, width)` buckets whose sides are positive multiples of `SIZE_MULTIPLE`."""
    for height, width in buckets:
        if height <= 0 or width <= 0 or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise DataError(f"Bucket {height},{width}: both sides must be positive multiples of {SIZE_MULTIPLE}.")
    return buckets


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The `(height, width)` bucket whose aspect ratio is closest to that of `size` = `(width, height)`."""
    from diffusers.training_utils import find_nearest_bucket

    width, height = size
    return buckets[find_nearest_bucket(height, width, buckets)]


def epoch_batches(sizes: list[tuple[int, int]], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """
    The batches of one epoch: the examples of each size shuffled and cut into batches of `batch_size` (the last of a
    size may be shorter), then all batches shuffled. Depends only on `(seed, epoch)`, so a resumed run forms the same
    batches.
    """
    generator = torch.Generator().manual_seed(_mix(seed, epoch, 0x5EED))
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(size, []).append(index)
    batches = []
    for size in sorted(groups):
        members = groups[size]
        order = torch.randperm(len(members), generator=generator).tolist()
        shuffled = [members[i] for i in order]
        batches.extend(shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size))
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def batches_per_epoch(sizes: list[tuple[int, int]], batch_size: int) -> int:
    counts: dict[tuple[int, int], int] = {}
    for size in sizes:
        counts[size] = counts.get(size, 0) + 1
    return sum(math.ceil(count / batch_size) for count in counts.values())


def micro_batch_stream(sizes: list[tuple[int, int]], batch_size: int, seed: int, start: int = 0):
    """Yields `(index, batch)` for the micro-batches of all epochs in order, from the `start`-th on."""
    per_epoch = batches_per_epoch(sizes, batch_size)
    epoch, offset = divmod(start, per_epoch)
    index = start
    while True:
        for batch in epoch_batches(sizes, batch_size, seed, epoch)[offset:]:
            yield index, batch
            index += 1
        epoch, offset = epoch + 1, 0


def _mix(*values: int) -> int:
    """One 63-bit seed from several integers, well mixed (nearby inputs give unrelated seeds)."""
    state = np.random.SeedSequence([v & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(1, np.uint64)[0]
    return int(state) >> 1  # a Python int: numpy 1 refuses to shift a uint64 by a (signed) int


def step_generator(seed: int, micro_batch: int) -> torch.Generator:
    """The CPU generator of one micro-batch's random draws (timesteps, latent samples, noise, condition dropout):
    a function of the seed and the micro-batch's place in the run only, so a resumed run draws the same."""
    return torch.Generator().manual_seed(_mix(seed, micro_batch))

# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
`ovis-u1 batch`: many generate, edit or chat jobs from a JSONL file, on one process or on one process per GPU under
`accelerate launch` / `torchrun`, resumable, with a manifest of what was done.

How the work is shared: every process reads and checks the whole file, forms the same batches (jobs of one shape, in
order of shape then line), and accelerate's `PartialState` hands each process a share of the batches that are not done
yet. A job's images depend on its own seed and on the jobs it is batched with, never on the number of processes, so
1 and 8 GPUs write the same files. Batching changes only float rounding (one generator per job, so the same noise).

What is done is in `OUTPUT_DIR/results.jsonl`, one JSON line per finished or failed job. Each process appends whole
lines with one `write` on a file opened with `O_APPEND`: on a local file system the kernel places each write at the
end as a unit, so lines from several processes never interleave. Images are written to a temporary name and renamed, so
a file that exists is complete. A job is done when the manifest holds a success for it (same job, same model) and its
files exist; a rerun skips those.
"""

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .inputs import InputError, check_writable_folder, open_image, save_image_atomically


MANIFEST = "results.jsonl"
ANSWERS = "answers.jsonl"
LAYOUTS = ("flat", "geneval")

# The keys a job line may set, by command; each but `prompt`, `image` and `id` defaults to the command line option
# of the same meaning.
JOB_KEYS = {
    "generate": ("prompt", "negative_prompt", "seed", "height", "width", "steps", "guidance", "count", "id"),
    "edit": ("prompt", "image", "seed", "height", "width", "steps", "guidance", "image_guidance", "count", "id"),
    "chat": ("prompt", "image", "max_new_tokens", "think", "id"),
}
# GenEval's evaluation_metadata.jsonl lines carry these besides `prompt`; its layout copies them to metadata.jsonl.
GENEVAL_KEYS = ("tag", "include", "exclude")
DEFAULT_OPTIONS = {
    "negative_prompt": "negative_prompt",
    "seed": "seed",
    "height": "height",
    "width": "width",
    "steps": "steps",
    "guidance": "guidance",
    "image_guidance": "image_guidance",
    "count": "count",
    "max_new_tokens": "max_new_tokens",
    "think": "think",
    "image": "image",
}


class BatchError(Exception):
    """Some jobs failed or some lines were invalid: the message says how many and where to look."""


@dataclass
class Job:
    line: int  # 1-based line of the jobs file
    params: dict  # every key of the command, defaults filled in
    source: dict  # the line as written
    outputs: list = field(default_factory=list)  # image files, relative to the output folder
    shape: tuple = ()  # jobs of one shape share a pipeline call
    fingerprint: str = ""

    @property
    def index(self) -> int:
        return self.line - 1

    @property
    def images(self) -> int:
        return self.params.get("count", 1)


# ------------------------------------------------------------------------------------------- reading jobs -------


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_value(key: str, value, command: str):
    """`value` of `key`, checked; raises ValueError with the message for the line."""
    from .pipelines import MAX_IMAGE_SIZE

    if key in ("prompt", "negative_prompt"):
        if key == "negative_prompt" and value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{key} must be a non-empty string, got {value!r}")
    elif key == "seed":
        if not _is_int(value) or not -(2**63) <= value < 2**64:
            raise ValueError(f"seed must be an integer, got {value!r}")
    elif key in ("height", "width"):
        if value is None and command == "edit":
            return None
        if not _is_int(value) or not 16 <= value <= MAX_IMAGE_SIZE:
            raise ValueError(f"{key} must be an integer between 16 and {MAX_IMAGE_SIZE}, got {value!r}")
    elif key in ("steps", "count", "max_new_tokens"):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    elif key in ("guidance", "image_guidance"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
    elif key == "think":
        if not isinstance(value, bool):
            raise ValueError(f"think must be true or false, got {value!r}")
    elif key == "id":
        text = str(value) if _is_int(value) else value
        if not isinstance(text, str) or not text or text.startswith(".") or "/" in text or "\\" in text:
            raise ValueError(f"id must be a non-empty string or integer usable as a file name, got {value!r}")
        return text
    return value


def _check_images(value, command: str, folder: Path) -> list[str]:
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise ValueError(f"image must be a path or a list of paths, got {value!r}")
    if command == "edit" and len(paths) != 1:
        raise ValueError(f"an edit takes one image, got {len(paths)}")
    resolved = []
    for path in paths:
        path = Path(path).expanduser()
        path = path if path.is_absolute() else folder / path
        open_image(path, f"image {path}")  # raises InputError, reported like the others
        resolved.append(str(path))
    return resolved


def read_jobs(jobs_file, command: str, defaults, layout: str = "flat") -> tuple[list[Job], list[tuple[int, str]]]:
    """
    The valid jobs of `jobs_file` and the bad lines as `(line, message)`. Keys a line leaves out take their value from
    `defaults` (the parsed command line); image paths are relative to the file's folder. Blank lines are skipped.
    """
    from .pipelines.pipeline_ovis_u1_edit import EDIT_MAX_PIXELS, EDIT_MIN_PIXELS, EDIT_SIZE_FACTOR
    from .modeling.image_processing_ovis_u1 import smart_resize

    jobs_file = Path(jobs_file)
    known = JOB_KEYS[command] + (GENEVAL_KEYS if layout == "geneval" else ())
    jobs, bad, names = [], [], {}
    with open(jobs_file, encoding="utf-8") as file:
        lines = list(file)
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            try:
                source = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(source, dict):
                raise ValueError(f"must be a JSON object, got {type(source).__name__}")
            unknown = sorted(set(source) - set(known))
            if unknown:
                raise ValueError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
            if "prompt" not in source:
                raise ValueError("prompt is missing")
            params = {}
            for key in JOB_KEYS[command]:
                if key in source:
                    value = source[key]
                elif key in DEFAULT_OPTIONS:
                    value = getattr(defaults, DEFAULT_OPTIONS[key], None)
                else:
                    continue
                if key == "image":
                    if value is None or value == []:
                        if command == "edit":
                            raise ValueError("image is missing: the image to edit")
                        value = []
                    params[key] = _check_images(value, command, jobs_file.parent)
                else:
                    params[key] = _check_value(key, value, command)
            job = Job(number, params, source)
            if command == "edit" and (params.get("height") is None) != (params.get("width") is None):
                raise ValueError("give both height and width, or neither")
            if command == "edit" and params.get("height") is None:
                image = open_image(params["image"][0], "image")
                params["height"], params["width"] = smart_resize(
                    image.height, image.width, EDIT_SIZE_FACTOR, EDIT_MIN_PIXELS, EDIT_MAX_PIXELS
                )
            job.outputs = _output_names(job, command, layout)
            for name in job.outputs or [f"line {number}"]:
                if name in names:
                    raise ValueError(f"writes {name}, as line {names[name]} does: give another id")
            names.update((name, number) for name in job.outputs)
            job.shape = _shape(params, command)
            job.fingerprint = _fingerprint(command, params, defaults.model, layout)
            jobs.append(job)
        except (ValueError, InputError) as error:
            bad.append((number, str(error)))
    return jobs, bad


def _output_names(job: Job, command: str, layout: str) -> list[str]:
    if command == "chat":
        return []
    count = job.params["count"]
    if layout == "geneval":
        # GenEval's generation/diffusers_generate.py: `{index:0>5}/samples/{sample:05}.png`, index over all lines.
        return [f"{job.index:05d}/samples/{i:05d}.png" for i in range(count)]
    stem = job.params.get("id") or f"{job.index:05d}"
    return [f"{stem}.png"] if count == 1 else [f"{stem}-{i}.png" for i in range(count)]


def _shape(params: dict, command: str) -> tuple:
    """What must be equal for jobs to share one pipeline call (or one `generate` call, for chat)."""
    if command == "generate":
        return (params["height"], params["width"], params["steps"], float(params["guidance"]))
    if command == "edit":
        return (
            params["height"], params["width"], params["steps"], float(params["guidance"]), float(params["image_guidance"])
        )
    return (params["max_new_tokens"], params["think"])


def _fingerprint(command: str, params: dict, model: str, layout: str) -> str:
    text = json.dumps([command, params, model, layout], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def form_batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Jobs of one shape, sorted by shape then line, cut into batches of at most `batch_size` images (a job with more
    images is a batch of its own). The batches depend on the file and `batch_size` only."""
    batches, current, images = [], [], 0
    for job in sorted(jobs, key=lambda job: (job.shape, job.line)):
        if current and (job.shape != current[0].shape or images + job.images > batch_size):
            batches.append(current)
            current, images = [], 0
        current.append(job)
        images += job.images
    if current:
        batches.append(current)
    return batches


# ------------------------------------------------------------------------------------------- the manifest -------


def read_manifest(path: Path) -> list[dict]:
    """The records of the manifest; a line cut short by a killed process is ignored."""
    records = []
    if path.is_file():
        with open(path, encoding="utf-8") as file:
            for text in file:
                try:
                    record = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
    return records


def finished(jobs: list[Job], output_dir: Path) -> set[int]:
    """Lines of the jobs done by an earlier run: a success recorded for the same job and model, and every file there."""
    succeeded = {r.get("fingerprint") for r in read_manifest(output_dir / MANIFEST) if r.get("status") == "ok"}
    return {
        job.line
        for job in jobs
        if job.fingerprint in succeeded and all((output_dir / name).is_file() for name in job.outputs)
    }


def end_with_newline(path: Path) -> None:
    """A process killed in the middle of a write can leave a last line without its newline: end it, so that the next
    record starts on a line of its own."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as file:
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                file.write(b"\n")


def append_record(path: Path, record: dict) -> None:
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(handle, data)  # one write per line: see the module docstring
    finally:
        os.close(handle)


def write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


# ------------------------------------------------------------------------------------------- running -------


@dataclass
class Stats:
    done: int = 0
    failed: int = 0
    images: int = 0
    seconds: float = 0.0


def model_revision(path: str) -> str | None:
    """The Hub commit of a snapshot folder, else None (a local folder has no revision)."""
    parts = Path(path).parts
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):
        return parts[parts.index("snapshots") + 1]
    return None


class Runner:
    """Runs the batches of one process and records each job."""

    def __init__(self, command, args, output_dir: Path, layout: str, device, model_path: str, version: str):
        self.command, self.args, self.output_dir, self.layout = command, args, output_dir, layout
        self.device = device
        self.common = {"model": args.model, "revision": model_revision(model_path), "version": version}

    def run_jobs(self, jobs: list[Job]):
        """Results of `jobs` as one call: for images, a list of images per job; for chat, `(answer, tokens)`."""
        import torch

        if self.command == "chat":
            return self.answer(jobs)
        # One generator per job, repeated for its images: a job draws the same numbers alone or in any batch.
        generators = []
        for job in jobs:
            generator = torch.Generator().manual_seed(job.params["seed"])
            generators += [generator] * job.images
        params = jobs[0].params
        if self.command == "generate":
            from .pipelines.pipeline_ovis_u1 import UNCONDITIONAL_PROMPT

            prompts = [job.params["prompt"] for job in jobs for _ in range(job.images)]
            negative = [job.params.get("negative_prompt") or UNCONDITIONAL_PROMPT for job in jobs for _ in range(job.images)]
            images = self.pipe(
                prompts,
                negative_prompt=negative,
                height=params["height"],
                width=params["width"],
                num_inference_steps=params["steps"],
                guidance_scale=params["guidance"],
                generator=generators,
            ).images
        else:
            sources = {path: open_image(path, path).convert("RGB") for job in jobs for path in job.params["image"]}
            images = self.pipe(
                [sources[job.params["image"][0]] for job in jobs for _ in range(job.images)],
                [job.params["prompt"] for job in jobs for _ in range(job.images)],
                height=params["height"],
                width=params["width"],
                num_inference_steps=params["steps"],
                guidance_scale=params["guidance"],
                image_guidance_scale=params["image_guidance"],
                generator=generators,
            ).images
        results, start = [], 0
        for job in jobs:
            results.append(images[start : start + job.images])
            start += job.images
        return results

    def answer(self, jobs: list[Job]):
        import torch

        conversations, images = [], []
        for job in jobs:
            paths = job.params["image"]
            content = [{"type": "image"} for _ in paths] + [{"type": "text", "text": job.params["prompt"]}]
            conversations.append([{"role": "user", "content": content}])
            images.append([open_image(path, path) for path in paths])
        params = jobs[0].params
        # Left padding (the processor's) keeps every row's answer as it is alone.
        inputs = self.processor.encode_chat(
            conversations,
            images=images if any(images) else None,
            add_generation_prompt=True,
            enable_thinking=params["think"],
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=params["max_new_tokens"], do_sample=False)
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        results = []
        for row in output[:, inputs["input_ids"].shape[1] :].tolist():
            length = next((i for i, token in enumerate(row) if token in eos), len(row))
            answer = self.processor.decode(row[:length], skip_special_tokens=True)
            results.append((answer, length))
        return results

    def record(self, job: Job, result, seconds: float) -> dict:
        record = {"line": job.line, "status": "ok", "job": job.params, "seconds": round(seconds, 3)}
        if self.command == "chat":
            answer, tokens = result
            record.update(question_id=job.params.get("id", job.index), answer=answer, tokens=tokens)
        else:
            if self.layout == "geneval":
                folder = self.output_dir / f"{job.index:05d}"
                (folder / "samples").mkdir(parents=True, exist_ok=True)
                # GenEval reads this back with json.load: the prompt's line, as given.
                write_text_atomically(folder / "metadata.jsonl", json.dumps(job.source))
            for image, name in zip(result, job.outputs, strict=True):
                path = self.output_dir / name
                path.parent.mkdir(parents=True, exist_ok=True)
                save_image_atomically(image, path)
            record.update(outputs=job.outputs, seed=job.params["seed"])
        record.update(self.common, fingerprint=job.fingerprint)
        append_record(self.output_dir / MANIFEST, record)
        return record

    def fail(self, job: Job, error: Exception) -> None:
        record = {"line": job.line, "status": "failed", "job": job.params, "error": f"{type(error).__name__}: {error}"}
        append_record(self.output_dir / MANIFEST, {**record, **self.common, "fingerprint": job.fingerprint})

    def run(self, batches: list[list[Job]], progress) -> Stats:
        stats = Stats()
        started = time.perf_counter()
        for batch in batches:
            self.run_batch(batch, stats, progress)
        stats.seconds = time.perf_counter() - started
        return stats

    def run_batch(self, batch: list[Job], stats: Stats, progress) -> None:
        started = time.perf_counter()
        try:
            results = self.run_jobs(batch)
        except Exception as error:
            if len(batch) > 1:  # one bad job should not fail the others: run them one by one
                for job in batch:
                    self.run_batch([job], stats, progress)
                return
            self.fail(batch[0], error)
            stats.failed += 1
            progress.write(f"line {batch[0].line} failed: {type(error).__name__}: {error}", file=sys.stderr)
            progress.update(1)
            return
        seconds = (time.perf_counter() - started) / sum(job.images for job in batch)
        for job, result in zip(batch, results, strict=True):
            self.record(job, result, seconds * job.images)
            stats.done += 1
            stats.images += job.images if self.command != "chat" else 0
            progress.update(1)


def summary_table(stats: list[Stats], skipped: int, invalid: int, command: str) -> str:
    done, failed = sum(s.done for s in stats), sum(s.failed for s in stats)
    images = sum(s.images for s in stats)
    seconds = max((s.seconds for s in stats), default=0.0)
    unit = "answers" if command == "chat" else "images"
    produced = done if command == "chat" else images
    rate = produced / seconds if seconds else 0.0
    header = ("done", "skipped", "failed", "invalid", unit, "seconds", f"{unit}/s")
    values = (done, skipped, failed, invalid, produced, f"{seconds:.1f}", f"{rate:.2f}")
    widths = [max(len(str(h)), len(str(v))) for h, v in zip(header, values)]
    return "\n".join("  ".join(str(x).rjust(w) for x, w in zip(row, widths)) for row in (header, values))


def run_batch_command(args, version: str) -> None:
    """`ovis-u1 batch generate|edit|chat` (see the module docstring)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    command = args.batch_command
    layout = getattr(args, "layout", "flat")
    jobs_file = Path(args.jobs)
    if not jobs_file.is_file():
        raise InputError(f"JOBS {jobs_file} is not a file: give a JSONL file, one job a line.")
    check_writable_folder(args.output_dir, "--output-dir")
    output_dir = Path(args.output_dir)

    import torch

    # accelerate runs several CPU processes (gloo) only when told the device is the CPU.
    on_cpu = (args.device or "").startswith("cpu") or (args.device is None and not torch.cuda.is_available())
    state = PartialState(cpu=on_cpu)
    jobs, bad = read_jobs(jobs_file, command, args, layout)
    if state.is_main_process:
        for line, message in bad:
            print(f"ovis-u1 batch {command}: {jobs_file}:{line}: {message}; skipped", file=sys.stderr)
    if not jobs:
        raise InputError(f"{jobs_file} holds no valid job: fix the lines above.")

    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        end_with_newline(output_dir / MANIFEST)
    state.wait_for_everyone()
    done = finished(jobs, output_dir)
    batches = [[job for job in batch if job.line not in done] for batch in form_batches(jobs, args.batch_size)]
    batches = [batch for batch in batches if batch]
    # Everyone has read what is done before anyone writes.
    state.wait_for_everyone()
    with state.split_between_processes(batches) as mine:
        mine = list(mine)

    runner = load_runner(command, args, output_dir, layout, state, version)
    description = f"process {state.process_index}" if state.num_processes > 1 else command
    with tqdm(
        total=sum(len(batch) for batch in mine), desc=description, unit="job", position=state.process_index,
        dynamic_ncols=True,
    ) as progress:
        stats = runner.run(mine, progress)

    everyone = gather_object([stats])
    failed = sum(s.failed for s in everyone)
    if state.is_main_process:
        if command == "chat":
            write_answers(jobs, output_dir)
        print(summary_table(everyone, len(done), len(bad), command))
    state.wait_for_everyone()
    if failed or bad:
        problems = [f"{failed} job(s) failed"] if failed else []
        problems += [f"{len(bad)} line(s) of {jobs_file} are invalid"] if bad else []
        raise BatchError(f"{' and '.join(problems)}: see {output_dir / MANIFEST} and the messages above.")


def write_answers(jobs: list[Job], output_dir: Path) -> None:
    """`answers.jsonl` from the manifest, in the order of the jobs file, each question once."""
    latest = {}
    for record in read_manifest(output_dir / MANIFEST):
        if record.get("status") == "ok":
            latest[record.get("fingerprint")] = record
    lines = []
    for job in jobs:
        record = latest.get(job.fingerprint)
        if record is not None:
            fields = {key: record[key] for key in ("question_id", "answer", "tokens", "seconds")}
            lines.append(json.dumps({**fields, "prompt": job.params["prompt"]}, ensure_ascii=False) + "\n")
    write_text_atomically(output_dir / ANSWERS, "".join(lines))


def load_runner(command, args, output_dir, layout, state, version) -> Runner:
    from .cache import PIPELINE, resolve_model
    from .cli import load_pipeline, resolve_device_and_dtype

    if args.device is None and state.num_processes > 1:
        args.device = str(state.device)  # one device per process, as the launcher numbers them
    device, dtype = resolve_device_and_dtype(args)
    # A released checkpoint is converted once into the cache: by the first process, the others then find it.
    with state.main_process_first():
        resolved = resolve_model(args.model)
    runner = Runner(command, args, output_dir, layout, device, resolved.path, version)
    if command == "chat":
        from transformers import AutoModel, AutoProcessor

        in_subfolders = resolved.layout == PIPELINE
        kwargs = {"subfolder": "text_encoder"} if in_subfolders else {}
        runner.model = AutoModel.from_pretrained(resolved.path, dtype=dtype, attn_implementation=args.attn, **kwargs)
        runner.model.to(device).eval()
        runner.processor = AutoProcessor.from_pretrained(
            resolved.path, subfolder="processor" if in_subfolders else ""
        )
        return runner
    from .pipelines import OvisU1EditPipeline, OvisU1TextToImagePipeline

    if resolved.layout != PIPELINE:
        raise InputError(
            f"{args.model} holds the understanding model only; `ovis-u1 batch {command}` needs a pipeline folder "
            "(`ovis-u1 convert` writes one)."
        )
    pipeline_class = OvisU1TextToImagePipeline if command == "generate" else OvisU1EditPipeline
    runner.pipe = load_pipeline(args, pipeline_class, device, dtype, resolved.path)
    runner.pipe.set_progress_bar_config(disable=True)  # one bar per process, of jobs
    return runner


__all__ = ["BatchError", "read_jobs", "form_batches", "run_batch_command"]

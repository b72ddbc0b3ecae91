# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
Conversion of the released Ovis-U1 checkpoint (the `AIDC-AI/Ovis-U1-3B` layout) into one Hub-ready folder:
a diffusers pipeline folder (text encoder, processor, transformer, VAE, scheduler, model card), or with
`format="transformers"` a standalone understanding model folder.

The weights are streamed: one released tensor at a time is read (memory-mapped), re-laid out through the key map and
written into output shards of at most `max_shard_size`. Everything goes into a staging folder next to the output,
renamed into place only once complete (and verified); a later conversion removes the staging folders of killed ones
(see `staging`).
"""

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from huggingface_hub.errors import StrictDataclassError
from huggingface_hub.utils import tqdm
from transformers import AutoTokenizer, GenerationConfig, Qwen3Config

from .. import DEFAULT_MODEL_ID
from ..inputs import InputError, check_writable_folder
from ..modeling import OvisU1Config, OvisU1ForConditionalGeneration, OvisU1ImageProcessor, OvisU1Processor
from ..pipelines import OvisU1TextToImagePipeline, OvisU1Transformer2DModel
from .config import TranslatedConfig, translate_config
from .key_map import TEXT_ENCODER, TRANSFORMER, VAE, Plan, plan_conversion, relayout
from .model_card import model_card
from .source import ConversionError, ReleasedCheckpoint, SourceUnavailableError
from .staging import remove_stale, staging_folder
from .writer import (
    DIFFUSERS_WEIGHTS,
    TRANSFORMERS_WEIGHTS,
    ShardedSafetensorsWriter,
    parse_size,
    save_without_weights,
)


logger = logging.getLogger(__name__)

DEFAULT_SOURCE = DEFAULT_MODEL_ID
FORMATS = ("diffusers", "transformers")
DTYPES = {"keep": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DTYPES.update({"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32})


@dataclass
class ConversionReport:
    """What a conversion did."""

    output_dir: Path
    format: str
    source: str
    tensors_read: int = 0
    tensors_written: dict[str, int] = field(default_factory=dict)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    ignored_config_fields: list[str] = field(default_factory=list)
    unknown_config_fields: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    max_errors: dict[str, float] | None = None
    peak_buffered_bytes: int = 0
    repo_url: str | None = None

    def summary(self, verbose: bool = False) -> str:
        """A readable account; `verbose` lists every ignored config field (otherwise only their number)."""
        lines = [f"Converted {self.source} -> {self.output_dir} ({self.format} format)"]
        written = ", ".join(f"{name}: {count}" for name, count in self.tensors_written.items())
        lines.append(f"  released tensors read: {self.tensors_read}; tensors written: {written}")
        by_reason = {}
        for name, reason in self.dropped:
            by_reason.setdefault(reason, []).append(name)
        for reason, names in by_reason.items():
            shown = ", ".join(names[:3]) + (f", ... ({len(names)} tensors)" if len(names) > 3 else "")
            lines.append(f"  dropped {shown}: {reason}")
        if verbose:
            lines += [f"  config field ignored: {item}" for item in self.ignored_config_fields]
        elif self.ignored_config_fields:
            lines.append(
                f"  {len(self.ignored_config_fields)} config fields ignored with a reason (--verbose lists them)"
            )
        lines += [f"  UNKNOWN config field (not carried over): {item}" for item in self.unknown_config_fields]
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(f"  largest weight buffer held in memory: {self.peak_buffered_bytes / 2**20:.1f} MiB")
        if self.max_errors is not None:
            lines.append(
                f"  verified against the released weights, tensor by tensor: {', '.join(self.max_errors)} bit-exact"
            )
        if self.repo_url:
            lines.append(f"  pushed to {self.repo_url}")
        return "\n".join(lines)


def convert(
    output_dir,
    source=DEFAULT_SOURCE,
    *,
    format: str = "diffusers",
    dtype: str | torch.dtype | None = "keep",
    max_shard_size: int | str = "5GB",
    force: bool = False,
    verify: bool = True,
    push_to_hub: str | None = None,
    private: bool = False,
    revision: str | None = None,
    cache_dir=None,
    token: str | None = None,
) -> ConversionReport:
    """
    Converts a released Ovis-U1 checkpoint into one Hub-ready folder.

    Args:
        output_dir: The folder to write. It must not exist unless `force`.
        source: A local folder in the released layout, or a Hub repo id (downloaded with `snapshot_download`).
        format: `"diffusers"`: the pipeline folder (`model_index.json`, `text_encoder/`, `processor/`,
            `transformer/`, `vae/`, `scheduler/`, `README.md`) that loads with `OvisU1TextToImagePipeline` /
            `OvisU1EditPipeline.from_pretrained`, or as remote code. `"transformers"`: the understanding model and
            its processor only, loadable with `AutoModel` / `AutoProcessor`.
        dtype: `"keep"` (each tensor as released), `"bfloat16"`, `"float16"` or `"float32"`.
        max_shard_size: Largest output safetensors shard, e.g. `"5GB"`.
        force: Replace an existing `output_dir`.
        verify: Check the output against the released weights: each component's saved config must describe exactly
            the saved tensors, and every saved tensor must equal (bit for bit) the released one it comes from. Read
            lazily, one tensor at a time, so verifying takes no more memory than writing.
        push_to_hub: A repo id to upload the folder to (created if needed; token from `token` or the environment).
            The token, the Hub and write access are checked before converting (`check_push_access`).
        private: Create the repo private.
        revision, cache_dir, token: For downloading `source` from the Hub.

    Returns:
        A [`ConversionReport`].

    Raises:
        ConversionError: the source does not convert (missing, unexpected or mis-shaped tensors, damaged files,
            contradictory config), the output exists, or its folder cannot be written; nothing is left behind.
    """
    if format not in FORMATS:
        raise ConversionError(f"format must be one of {FORMATS}, got {format!r}.")
    output = Path(output_dir).expanduser().absolute()
    if output.exists() and not force:
        raise ConversionError(f"{output} already exists; pass force=True (--force) to replace it.")
    if output.exists() and not output.is_dir():
        raise ConversionError(f"{output} exists and is not a folder.")
    out_dtype = _parse_dtype(dtype)
    try:
        shard_size = parse_size(max_shard_size)
    except ValueError as error:
        raise ConversionError(str(error)) from None
    _check_writable(output)
    if push_to_hub:
        check_push_access(push_to_hub, token)

    checkpoint = ReleasedCheckpoint.resolve(source, revision=revision, cache_dir=cache_dir, token=token)
    translated = translate_config(checkpoint.config, checkpoint.preprocessor_config)
    report = ConversionReport(output, format, str(source))
    report.ignored_config_fields = translated.report.ignored
    report.unknown_config_fields = translated.report.unknown
    for item in report.unknown_config_fields:
        logger.warning(f"Unknown config field, not carried over: {item}")

    processor = _build_processor(checkpoint, translated, report)
    try:
        components = _build_components(translated, processor, format)
    except ConversionError:
        raise
    except (ValueError, TypeError, StrictDataclassError) as error:
        raise ConversionError(f"config.json translates into an invalid configuration: {error}") from error
    models = [name for name in (TEXT_ENCODER, TRANSFORMER, VAE) if name in components]
    expected = {name: _expected_shapes(components[name], translated) for name in models}
    plan = plan_conversion(checkpoint.tensors, expected, translated.decoder_width, translated.tie_word_embeddings)
    report.dropped = plan.dropped
    report.tensors_read = len(checkpoint.tensors)
    dtypes = _component_dtypes(checkpoint, plan, out_dtype)
    components[TEXT_ENCODER].to(dtypes[TEXT_ENCODER])  # its config records the dtype (diffusers configs do not)

    output.parent.mkdir(parents=True, exist_ok=True)
    for path in remove_stale(output.parent, output.name):
        report.notes.append(f"removed {path.name}, left beside the output by a conversion that was killed")
    with staging_folder(output) as staging:  # removed on any failure; renamed into place on success
        if format == "diffusers":
            pipeline = OvisU1TextToImagePipeline(**components)
            for name, component in pipeline.components.items():
                save_without_weights(component, staging / name)
            pipeline.save_config(staging)  # model_index.json and the code files, as save_pretrained writes them
            folders = {name: staging / name for name in expected}
        else:
            save_without_weights(components[TEXT_ENCODER], staging)
            processor.save_pretrained(staging)
            folders = {TEXT_ENCODER: staging}
        _write_weights(checkpoint, plan, translated, folders, shard_size, out_dtype, report)
        shift = translated.scheduler["use_dynamic_shifting"]
        card = model_card(format, push_to_hub, str(source), shift, random_weights=checkpoint.random_weights)
        (staging / "README.md").write_text(card, encoding="utf-8")
        if verify:
            from .verify import verify_conversion

            processor_folder = staging / "processor" if format == "diffusers" else staging
            report.max_errors = verify_conversion(folders, checkpoint, plan, translated, out_dtype, processor_folder)
        _replace(staging, output)

    if push_to_hub:
        try:
            report.repo_url = push_folder(output, push_to_hub, private=private, token=token)
        except Exception as error:  # the network or the Hub failed midway, after the checks
            raise ConversionError(
                f"{output} is converted, but uploading it to {push_to_hub} failed ({_hub_failure(error)}): "
                f"upload it with `hf upload {push_to_hub} {output}`."
            ) from error
    return report


def check_push_access(repo_id: str, token: str | None = None) -> None:
    """
    What `push_folder` needs, checked before converting: `repo_id` is a repo id, a token is at hand, the Hub answers and
    accepts the token, the token may write, and `repo_id`'s namespace is its user's or one of their organizations'.

    Raises:
        ConversionError: one line saying which of these fails and what to do.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        reason = str(error).splitlines()[0]
        raise ConversionError(f"--push-to-hub {repo_id} is not a Hub repo id ({reason}): e.g. you/ovis-u1.") from None
    try:
        token = token or get_token()
    except Exception as error:  # a configured token exchange (HF_OIDC_RESOURCE) that fails
        raise ConversionError(f"Cannot push to {repo_id}: no Hugging Face token ({_hub_failure(error)}).") from None
    if not token:
        raise ConversionError(
            f"Cannot push to {repo_id}: no Hugging Face token. Log in with `hf auth login` or set HF_TOKEN to a token "
            "with write access, then convert again."
        )
    try:
        me = HfApi(token=token).whoami()
    except Exception as error:
        raise ConversionError(f"Cannot push to {repo_id}: {_hub_failure(error)}. Nothing was converted.") from None
    if me.get("auth", {}).get("accessToken", {}).get("role") == "read":
        raise ConversionError(
            f"Cannot push to {repo_id}: the token of {me.get('name')} is read-only. Use a token with write access "
            "(https://huggingface.co/settings/tokens)."
        )
    namespaces = [me.get("name")] + [org.get("name") for org in me.get("orgs", [])]
    namespace = repo_id.split("/")[0] if "/" in repo_id else me.get("name")
    if namespace not in namespaces:
        raise ConversionError(
            f"Cannot push to {repo_id}: the token is {me.get('name')}'s, who cannot create repos in {namespace}. "
            f"Push to one of: {', '.join(f'{name}/...' for name in namespaces)}."
        )


def push_folder(folder, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Uploads a converted folder to the Hub (creating the repo if needed); returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=url.repo_id, folder_path=str(folder), repo_type="model", commit_message="Upload Ovis-U1 (ovis-u1-hf)"
    )
    return str(url)


# ---------------------------------------------------------------------------------------------- helpers ---------


def _hub_failure(error: Exception) -> str:
    """A failed Hub call, in one line."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set; unset it to upload"
    first_line = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, HfHubHTTPError):
        status = getattr(error.response, "status_code", None)
        return f"the Hub answered {status}: {first_line}"
    # Connection, proxy, DNS, timeout (the type says which): huggingface_hub talks through httpx, or from 2.0 its
    # successor httpx2, and both derive these errors from a TransportError.
    network = isinstance(error, (ConnectionError, TimeoutError))
    if network or any(base.__name__ == "TransportError" for base in type(error).__mro__):
        return f"the Hugging Face Hub cannot be reached ({type(error).__name__}: {first_line})"
    return f"{type(error).__name__}: {first_line}"


def _check_writable(output: Path) -> None:
    """Before any work: the staging folder can be made beside `output`, and an existing `output` moved away."""
    try:
        check_writable_folder(output.parent, "The output's folder")
        if output.exists():
            check_writable_folder(output, "The existing output")  # moving a folder rewrites its ".." entry
    except InputError as error:
        raise ConversionError(str(error)) from None


def _parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConversionError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    return DTYPES[dtype]


def _component_dtypes(checkpoint: ReleasedCheckpoint, plan: Plan, out_dtype) -> dict[str, torch.dtype]:
    """Per component: the output dtype, or with "keep" the dtype holding most of its released parameters."""
    dtypes = {}
    for component, mappings in plan.by_component.items():
        counts = Counter()
        for mapping in mappings:
            info = checkpoint.tensors[mapping.source]
            if info.dtype.is_floating_point:
                counts[info.dtype] += torch.Size(info.shape).numel()
        dtypes[component] = out_dtype or (counts.most_common(1)[0][0] if counts else torch.float32)
    return dtypes


def _build_processor(checkpoint: ReleasedCheckpoint, translated: TranslatedConfig, report) -> OvisU1Processor:
    try:
        # The LLM's config, so that transformers never parses the released config.json as an OvisU1Config.
        tokenizer = AutoTokenizer.from_pretrained(checkpoint.folder, config=Qwen3Config(**translated.text_config))
    except Exception as error:
        raise ConversionError(f"Cannot load the tokenizer of {checkpoint.folder}: {error}") from error
    if getattr(tokenizer, "chat_template", None):
        # The processor's template is the released conversation format; the tokenizer's (Qwen3's) would compete.
        tokenizer.chat_template = None
        report.notes.append("the tokenizer's own chat template is replaced by the processor's (released format)")
    for key in ("chat_template", "is_local", "local_files_only"):  # loading-time values, meaningless once published
        tokenizer.init_kwargs.pop(key, None)
    image_processor = OvisU1ImageProcessor(**translated.image_processor)
    try:
        return OvisU1Processor(image_processor, tokenizer, multimodal_max_length=translated.multimodal_max_length)
    except ValueError as error:
        raise ConversionError(f"The tokenizer of {checkpoint.folder} does not fit the processor: {error}") from None


def _build_components(translated: TranslatedConfig, processor: OvisU1Processor, format: str) -> dict:
    """The pipeline components, models on the meta device (configs and structure only, no memory)."""
    tokenizer = processor.tokenizer
    config = OvisU1Config(
        text_config=translated.text_config,
        vision_config=translated.vision_config,
        image_token_id=processor.image_token_id,
        visual_indicator_token_ids=[processor.image_start_token_id, processor.image_end_token_id],
        multimodal_max_length=translated.multimodal_max_length,
        tie_word_embeddings=translated.tie_word_embeddings,
    )
    with torch.device("meta"):
        text_encoder = OvisU1ForConditionalGeneration._from_config(config)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # The released chat defaults: greedy, stop at <|im_end|>.
    text_encoder.generation_config = GenerationConfig(
        bos_token_id=translated.text_config.get("bos_token_id"),
        eos_token_id=end_of_turn if end_of_turn is not None else translated.text_config.get("eos_token_id"),
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=4096,
    )
    components = {TEXT_ENCODER: text_encoder, "processor": processor}
    if format == "diffusers":
        with torch.device("meta"):
            components[TRANSFORMER] = OvisU1Transformer2DModel.from_config(translated.transformer)
            components[VAE] = AutoencoderKL.from_config(translated.vae)
        components["scheduler"] = FlowMatchEulerDiscreteScheduler.from_config(translated.scheduler)
    return components


def _expected_shapes(model, translated: TranslatedConfig) -> dict[str, tuple[int, ...]]:
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if isinstance(model, OvisU1ForConditionalGeneration) and translated.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def _write_weights(checkpoint, plan: Plan, translated, folders: dict, shard_size, out_dtype, report) -> None:
    names = {TEXT_ENCODER: TRANSFORMERS_WEIGHTS, TRANSFORMER: DIFFUSERS_WEIGHTS, VAE: DIFFUSERS_WEIGHTS}
    sources = [checkpoint.tensors[mapping.source] for component in folders for mapping in plan.by_component[component]]
    total = sum(torch.Size(info.shape).numel() * info.dtype.itemsize for info in sources)
    bar = tqdm(total=total, desc="Writing converted weights", unit="B", unit_scale=True, unit_divisor=1024)
    with checkpoint.open() as reader, bar:
        for component, folder in folders.items():
            writer = ShardedSafetensorsWriter(folder, names[component], shard_size, out_dtype)
            count = 0
            for mapping in plan.by_component[component]:
                source = reader.get(mapping.source)
                tensors = relayout(mapping, source, translated.decoder_width)
                for target, tensor in zip(mapping.targets, tensors, strict=True):
                    writer.add(target, tensor)
                    count += 1
                bar.update(source.numel() * source.element_size())
                del source, tensors
            writer.close()
            report.tensors_written[component] = count
            report.peak_buffered_bytes = max(report.peak_buffered_bytes, writer.peak_buffered_bytes)


def _replace(staging: Path, output: Path) -> None:
    if not output.exists():
        staging.rename(output)
        return
    with staging_folder(output, "replaced") as old:  # the old output, removed with it
        output.rename(old / output.name)
        try:
            staging.rename(output)
        except BaseException:
            (old / output.name).rename(output)
            raise


__all__ = [
    "ConversionError",
    "ConversionReport",
    "DEFAULT_SOURCE",
    "SourceUnavailableError",
    "check_push_access",
    "convert",
    "push_folder",
]

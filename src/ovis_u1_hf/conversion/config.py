# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""Translation of the released `config.json` and `preprocessor_config.json` into our configurations.

Every field of the released files is either translated, checked, or ignored with a reason; a field this module does
not know is reported (and not carried over), never silently dropped.
"""

import inspect
from dataclasses import dataclass, field

from diffusers import AutoencoderKL
from transformers import Qwen3Config

from .source import ConversionError


# Serialization metadata and the generic `PretrainedConfig` fields that transformers 4.x wrote into every (sub-)config
# dict. They carry nothing about the architecture.
GENERIC_FIELDS = frozenset(
    """
    _name_or_path _commit_hash _attn_implementation_autoset _class_name _diffusers_version _use_default_values
    architectures auto_map torch_dtype dtype transformers_version return_dict output_hidden_states output_attentions
    torchscript use_bfloat16 tf_legacy_loss pruned_heads chunk_size_feed_forward is_encoder_decoder is_decoder
    cross_attention_hidden_size add_cross_attention tie_encoder_decoder max_length min_length do_sample early_stopping
    num_beams num_beam_groups diversity_penalty temperature top_k top_p typical_p repetition_penalty length_penalty
    no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores
    return_dict_in_generate forced_bos_token_id forced_eos_token_id remove_invalid_values
    exponential_decay_length_penalty suppress_tokens begin_suppress_tokens finetuning_task id2label label2id
    tokenizer_class prefix bos_token_id pad_token_id eos_token_id sep_token_id decoder_start_token_id
    task_specific_params problem_type
    """.split()
)
# The Qwen3 fields carried into our text config: Qwen3Config's own, the special token ids, and the rope fields of
# older transformers releases that Qwen3Config still converts.
QWEN3_FIELDS = frozenset(
    name
    for name in Qwen3Config.__dataclass_fields__
    if not name.startswith(("_", "base_model_"))
    and name not in GENERIC_FIELDS
    and name.islower()
    and name not in {"attribute_map", "base_config_key", "sub_configs_defaults", "extra_config_files", "extra_files"}
) | {"bos_token_id", "eos_token_id", "pad_token_id", "rope_theta", "rope_scaling"}
VISUAL_TOKENIZER_TYPES = ("aimv2_visual_tokenizer", "aimv2_native_visual_tokenizer")
BACKBONE_TYPES = ("aimv2", "aimv2_native")

# Released constants that the config files do not store.
REFINER_NUM_LAYERS = 2
REFINER_MLP_RATIO = 4.0
NUM_TRAIN_TIMESTEPS = 1000
BASE_IMAGE_SEQ_LEN = 256
MAX_IMAGE_SEQ_LEN = 4096

# transformers 4.x wrote `tie_word_embeddings` into every sub-config; only llm_config's decides the head tie.
NOT_THE_HEAD_TIE = "a generic field of every 4.x config; the head tie comes from llm_config (and disable_tie_weight)"

_REQUIRED = object()


@dataclass
class ConfigReport:
    """What the translation did with fields it does not carry over."""

    ignored: list[str] = field(default_factory=list)  # "section.field: reason"
    unknown: list[str] = field(default_factory=list)  # "section.field"


@dataclass
class TranslatedConfig:
    """Our configurations, as keyword dicts for the classes that take them."""

    text_config: dict
    vision_config: dict
    multimodal_max_length: int
    tie_word_embeddings: bool
    transformer: dict
    vae: dict
    scheduler: dict
    image_processor: dict
    report: ConfigReport

    @property
    def decoder_width(self) -> int:
        return self.transformer["num_attention_heads"] * self.transformer["attention_head_dim"]


class _Section:
    """The fields of one released config dict, consumed one by one; `finish` reports the ones nobody consumed."""

    def __init__(self, data, where: str, report: ConfigReport, generic=GENERIC_FIELDS):
        if not isinstance(data, dict):
            raise ConversionError(f"{where} must be a JSON object, got {type(data).__name__}.")
        self.data, self.where, self.report, self.generic = dict(data), where, report, generic

    def take(self, name: str, default=_REQUIRED, note_default: bool = False):
        if name in self.data:
            return self.data.pop(name)
        if default is _REQUIRED:
            raise ConversionError(f"{self.where}.{name} is missing.")
        if note_default:
            self.report.ignored.append(f"{self.where}.{name}: absent, using {default!r}")
        return default

    def ignore(self, *names: str, reason: str):
        for name in names:
            if name in self.data:
                value = self.data.pop(name)
                self.report.ignored.append(f"{self.where}.{name}={value!r}: {reason}")

    def expect(self, name: str, allowed: tuple, required: bool = True):
        value = self.take(name, None if not required else _REQUIRED)
        if value is not None and value not in allowed:
            raise ConversionError(f"{self.where}.{name} is {value!r}; this converter handles {' or '.join(allowed)}.")
        return value

    def finish(self):
        for name in sorted(self.data):
            if name not in self.generic:
                self.report.unknown.append(f"{self.where}.{name}={self.data[name]!r}")


def _parse_indexes(value) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [int(i) for i in value.split("|") if i.strip()]
    return [int(i) for i in value]


def _text_config(llm: dict, report: ConfigReport) -> dict:
    section = _Section(llm, "llm_config", report)
    section.expect("model_type", ("qwen3",))
    section.ignore(
        "attn_implementation",
        "_attn_implementation",
        reason="the attention backend is chosen when loading (attn_implementation=...), never stored",
    )
    text = {name: section.take(name) for name in sorted(QWEN3_FIELDS) if name in section.data}
    text["model_type"] = "qwen3"
    section.finish()
    return text


def _vision_config(tokenizer: dict, report: ConfigReport) -> dict:
    section = _Section(tokenizer, "visual_tokenizer_config", report)
    section.expect("model_type", VISUAL_TOKENIZER_TYPES)
    raw_backbone = section.take("backbone_config")
    backbone = _Section(raw_backbone, "visual_tokenizer_config.backbone_config", report)
    backbone.expect("model_type", BACKBONE_TYPES)

    # The encoder's structure comes from backbone_config; the visual tokenizer's copies are not used by the released
    # model when it loads.
    vision = {
        "hidden_size": backbone.take("hidden_size"),
        "intermediate_size": backbone.take("intermediate_size"),
        "num_hidden_layers": backbone.take("num_hidden_layers"),
        "num_attention_heads": backbone.take("num_attention_heads"),
        "num_channels": backbone.take("num_channels", 3, note_default=True),
        "image_size": backbone.take("image_size"),
        "patch_size": backbone.take("patch_size"),
        "rms_norm_eps": backbone.take("rms_norm_eps", 1e-5, note_default=True),
        "qkv_bias": backbone.take("qkv_bias", False, note_default=True),
        "use_bias": backbone.take("use_bias", False, note_default=True),
        "hidden_stride": backbone.take("hidden_stride", 2, note_default=True),
        "window_size": backbone.take("window_size", 112, note_default=True),
        "fullatt_block_indexes": _parse_indexes(backbone.take("fullatt_block_indexes", None, note_default=True)),
        "temporal_patch_size": backbone.take("temporal_patch_size", 1, note_default=True),
        "preserve_original_pe": backbone.take("preserve_original_pe", False, note_default=True),
        "interpolate_pe_method": backbone.take("interpolate_pe_method", "one_dim", note_default=True),
        "disable_rope": backbone.take("disable_rope", False, note_default=True),
        "vocab_size": section.take("vocab_size"),
        "tokenize_function": section.take("tokenize_function", "softmax", note_default=True),
        "tau": section.take("tau", 1.0, note_default=True),
    }
    backbone.ignore(
        "min_pixels", "max_pixels", reason="the image processor's limits come from preprocessor_config.json"
    )
    backbone.ignore("attention_dropout", "projection_dropout", reason="dropout does not exist at inference")
    backbone.ignore("tie_word_embeddings", reason=NOT_THE_HEAD_TIE)
    backbone.finish()

    # The released config class merges backbone_kwargs into backbone_config when it is built, so the saved
    # backbone_config already holds them; a value that disagrees would make the two descriptions contradict.
    backbone_kwargs = section.take("backbone_kwargs", None)
    for name, value in (backbone_kwargs or {}).items():
        if name in raw_backbone and raw_backbone[name] != value:
            raise ConversionError(
                f"visual_tokenizer_config.backbone_kwargs.{name}={value!r} contradicts "
                f"backbone_config.{name}={raw_backbone[name]!r}."
            )
    if backbone_kwargs is not None:
        report.ignored.append(
            f"visual_tokenizer_config.backbone_kwargs={backbone_kwargs!r}: merged into backbone_config when saved"
        )

    depths = _parse_indexes(section.take("depths", None))
    if depths is not None and sum(depths) != vision["num_hidden_layers"]:
        raise ConversionError(
            f"visual_tokenizer_config.depths={depths} contradicts backbone_config.num_hidden_layers="
            f"{vision['num_hidden_layers']}."
        )
    stride = section.take("hidden_stride", vision["hidden_stride"])
    if stride != vision["hidden_stride"]:
        raise ConversionError(
            f"visual_tokenizer_config.hidden_stride={stride} contradicts backbone_config.hidden_stride="
            f"{vision['hidden_stride']}."
        )
    section.ignore(
        "min_pixels",
        "max_pixels",
        "temporal_patch_size",
        "patch_size",
        "window_size",
        "fullatt_block_indexes",
        "preserve_original_pe",
        "interpolate_pe_method",
        "disable_rope",
        reason="copy of a backbone_config field, unused when the released model loads (backbone_config wins)",
    )
    section.ignore("drop_cls_token", reason="ignored by the released model")
    section.ignore(
        "image_processor_new_kwargs", reason="the image processor's settings come from preprocessor_config.json"
    )
    section.ignore("tie_word_embeddings", reason=NOT_THE_HEAD_TIE)
    section.ignore("use_indicators", reason="the released model always reserves 4 indicator rows")
    section.finish()
    return vision


def _generator_config(generator: dict, report: ConfigReport) -> tuple[dict, dict, dict]:
    section = _Section(generator, "visual_generator_config", report)
    section.expect("model_type", ("yak",))
    txt_type = section.take("txt_type", "refiner", note_default=True)
    if txt_type != "refiner":
        raise ConversionError(f"visual_generator_config.txt_type is {txt_type!r}; only 'refiner' is supported.")
    width, heads = section.take("hidden_size"), section.take("num_heads")
    if width % heads:
        raise ConversionError(f"visual_generator_config.hidden_size={width} is not divisible by num_heads={heads}.")
    vec_in_dim = section.take("vec_in_dim", width)
    if vec_in_dim != width:
        raise ConversionError(
            f"visual_generator_config.vec_in_dim={vec_in_dim} must equal hidden_size={width} (the pooled refiner "
            "output feeds vector_in)."
        )
    transformer = {
        "in_channels": section.take("in_channels"),
        "out_channels": section.take("out_channels", None),
        "num_layers": section.take("depth"),
        "num_single_layers": section.take("depth_single_blocks"),
        "attention_head_dim": width // heads,
        "num_attention_heads": heads,
        "joint_attention_dim": section.take("context_in_dim"),
        "mlp_ratio": float(section.take("mlp_ratio")),
        "axes_dims_rope": list(section.take("axes_dim")),
        "theta": section.take("theta", 10000, note_default=True),
        "qkv_bias": section.take("qkv_bias", True, note_default=True),
        "guidance_embeds": section.take("guidance_embed", False, note_default=True),
        "refiner_num_layers": REFINER_NUM_LAYERS,
        "refiner_num_attention_heads": 2 * heads,  # the released refiner has twice the decoder's heads
        "refiner_mlp_ratio": REFINER_MLP_RATIO,
    }
    if sum(transformer["axes_dims_rope"]) != transformer["attention_head_dim"]:
        raise ConversionError(
            f"visual_generator_config.axes_dim={transformer['axes_dims_rope']} must sum to the head dim "
            f"{transformer['attention_head_dim']}."
        )
    scheduler = {
        "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
        "shift": 1.0,
        "use_dynamic_shifting": bool(section.take("timestep_shift", False, note_default=True)),
        "base_shift": section.take("base_shift", 0.5, note_default=True),
        "max_shift": section.take("max_shift", 1.15, note_default=True),
        "base_image_seq_len": BASE_IMAGE_SEQ_LEN,
        "max_image_seq_len": MAX_IMAGE_SEQ_LEN,
        "time_shift_type": "exponential",
    }
    vae = _vae_config(section.take("vae_config"), report)
    section.ignore(
        "checkpoint", reason="where the released code loaded the generator from; the weights come from the safetensors"
    )
    section.ignore("tie_word_embeddings", reason=NOT_THE_HEAD_TIE)
    section.finish()
    return transformer, scheduler, vae


def _vae_config(data: dict, report: ConfigReport) -> dict:
    section = _Section(data, "visual_generator_config.vae_config", report)
    class_name = section.take("_class_name", "AutoencoderKL")
    if class_name != "AutoencoderKL":
        raise ConversionError(f"visual_generator_config.vae_config is a {class_name}; expected an AutoencoderKL.")
    parameters = set(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}
    vae = {name: section.take(name) for name in sorted(parameters) if name in section.data}
    section.finish()
    return vae


def _image_processor_config(data: dict | None, vision: dict, report: ConfigReport) -> dict:
    if data is None:
        report.ignored.append("preprocessor_config.json: absent, using the image processor's defaults")
        return {"patch_size": vision["patch_size"], "hidden_stride": vision["hidden_stride"]}
    section = _Section(
        data, "preprocessor_config", report, GENERIC_FIELDS | {"image_processor_type", "processor_class"}
    )
    section.ignore("feature_extractor_type", reason="replaced by OvisU1ImageProcessor")
    if not section.take("do_resize", True):
        raise ConversionError("preprocessor_config.do_resize is false; the released model always resizes.")
    section.ignore("size", reason="images are resized with smart_resize between min_pixels and max_pixels")
    section.ignore("do_center_crop", "crop_size", reason="the released preprocessing never center-crops")
    names = ("do_convert_rgb", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")
    processor = {name: section.take(name) for name in names if name in section.data}
    for name in ("min_pixels", "max_pixels"):
        if name in section.data:
            processor[name] = section.take(name)
    for name in ("patch_size", "hidden_stride", "temporal_patch_size"):
        value = section.take(name, vision[name])
        if value != vision[name]:
            raise ConversionError(
                f"preprocessor_config.{name}={value} contradicts the vision encoder's {name}={vision[name]}."
            )
        processor[name] = value
    section.finish()
    return processor


def translate_config(config: dict, preprocessor_config: dict | None) -> TranslatedConfig:
    """Our configurations for a released `config.json` (and `preprocessor_config.json`)."""
    report = ConfigReport()
    top = _Section(config, "config", report)
    top.expect("model_type", ("ovis_u1",))
    formatter = top.take("conversation_formatter_class", "Qwen3ConversationFormatter", note_default=True)
    if formatter != "Qwen3ConversationFormatter":
        raise ConversionError(
            f"config.conversation_formatter_class is {formatter!r}; the processor's chat template implements "
            "Qwen3ConversationFormatter only."
        )
    top.ignore("tie_word_embeddings", reason=NOT_THE_HEAD_TIE)
    top.ignore(
        "llm_attn_implementation",
        reason="the attention backend is chosen when loading (eager, sdpa or flash_attention_2), never forced",
    )
    text = _text_config(top.take("llm_config"), report)
    hidden_size = top.take("hidden_size", text.get("hidden_size"))
    if hidden_size != text.get("hidden_size"):
        raise ConversionError(
            f"config.hidden_size={hidden_size} differs from llm_config.hidden_size={text.get('hidden_size')}."
        )
    # The released model ties its head to the embeddings when the LLM says so, unless `disable_tie_weight`. The field is
    # consumed before the test, which would otherwise skip it (and report it unknown) for an untied LLM.
    disable_tie = top.take("disable_tie_weight", False)
    tie = bool(text.get("tie_word_embeddings", True)) and not disable_tie
    text["tie_word_embeddings"] = tie
    vision = _vision_config(top.take("visual_tokenizer_config"), report)
    transformer, scheduler, vae = _generator_config(top.take("visual_generator_config"), report)
    if transformer["joint_attention_dim"] != 2 * text["hidden_size"]:
        raise ConversionError(
            f"visual_generator_config.context_in_dim={transformer['joint_attention_dim']} must be twice the LLM "
            f"width {text['hidden_size']} (the condition concatenates two hidden states)."
        )
    multimodal_max_length = top.take("multimodal_max_length", 2048, note_default=True)
    top.finish()
    image_processor = _image_processor_config(preprocessor_config, vision, report)
    return TranslatedConfig(
        text_config=text,
        vision_config=vision,
        multimodal_max_length=multimodal_max_length,
        tie_word_embeddings=tie,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        image_processor=image_processor,
        report=report,
    )


__all__ = ["ConfigReport", "TranslatedConfig", "translate_config"]

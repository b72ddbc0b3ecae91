# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""Configuration of the Ovis-U1 understanding model (vision encoder, visual tokenizer, Qwen3 language model)."""

import os

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


def check_pretrained_path(path):
    """
    `path` as `from_pretrained` takes it. A local folder (any `os.PathLike`, or a string that cannot be a Hub id) that
    does not exist fails here with one message, rather than later as an invalid Hub id.
    """
    if isinstance(path, os.PathLike) or (
        isinstance(path, str) and (os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1)
    ):
        path = os.path.expanduser(os.fspath(path))
        if not os.path.isdir(path):
            raise OSError(
                f"{path} is not a folder: give the folder of a converted Ovis-U1 model (`ovis-u1 convert OUTPUT "
                "--source FOLDER` writes one) or a Hub id."
            )
    return path


# Qwen3-1.7B, the language model of the released Ovis-U1-3B.
QWEN3_1_7B_DEFAULTS = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}


@strict
class OvisU1VisionConfig(PreTrainedConfig):
    r"""
    Configuration of the native-resolution AIMv2 vision encoder and of the visual tokenizer head on top of it.

    Args:
        hidden_size (`int`, *optional*, defaults to 1024):
            Width of the encoder.
        intermediate_size (`int`, *optional*, defaults to 2816):
            Width of the SwiGLU feed-forward layers.
        num_hidden_layers (`int`, *optional*, defaults to 24):
            Number of encoder blocks.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Number of attention heads in each block.
        num_channels (`int`, *optional*, defaults to 3):
            Number of image channels.
        image_size (`int`, *optional*, defaults to 448):
            Pre-training resolution; the learned position embedding covers `(image_size / patch_size) ** 2` patches.
        patch_size (`int`, *optional*, defaults to 14):
            Side of a square patch in pixels.
        temporal_patch_size (`int`, *optional*, defaults to 1):
            Frames per patch along time.
        rms_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the RMS norms.
        qkv_bias (`bool`, *optional*, defaults to `False`):
            Whether the fused query/key/value projection has a bias.
        use_bias (`bool`, *optional*, defaults to `False`):
            Whether the attention output projection and the feed-forward layers have biases.
        hidden_act (`str`, *optional*, defaults to `"silu"`):
            Activation of the gated feed-forward layers.
        hidden_stride (`int`, *optional*, defaults to 2):
            Side of the square group of neighbouring patches merged into one visual token.
        window_size (`int`, *optional*, defaults to 112):
            Side in pixels of the attention windows of the windowed blocks.
        fullatt_block_indexes (`list[int]`, *optional*, defaults to `[7, 15, 23]`):
            Blocks that attend over the whole image; the others attend within windows. `None` means every block
            attends over the whole image.
        preserve_original_pe (`bool`, *optional*, defaults to `True`):
            Whether the learned absolute position embedding is interpolated to each image grid and added.
        interpolate_pe_method (`str`, *optional*, defaults to `"two_dim"`):
            How the position embedding is resized: `"two_dim"` (bicubic over the 2D grid) or `"one_dim"` (linear
            over the flattened sequence).
        disable_rope (`bool`, *optional*, defaults to `False`):
            Whether to skip the 2D rotary position embedding.
        rope_theta (`float`, *optional*, defaults to 10000.0):
            Base of the 2D rotary frequencies.
        vocab_size (`int`, *optional*, defaults to 32768):
            Size of the visual vocabulary, i.e. the rows of the visual embedding table. The head predicts
            `vocab_size - num_visual_indicator_tokens` visual words.
        num_visual_indicator_tokens (`int`, *optional*, defaults to 4):
            Rows at the end of the visual vocabulary reserved for indicator tokens (never predicted by the head).
        tokenize_function (`str`, *optional*, defaults to `"softmax"`):
            How head logits become visual tokens: `"softmax"` (inference), `"gumbel_argmax"` or `"st_argmax"`.
        tau (`float`, *optional*, defaults to 1.0):
            Temperature of `"gumbel_argmax"`.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the weight initializer.
    """

    model_type = "ovis_u1_vision"
    base_config_key = "vision_config"

    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_hidden_layers: int = 24
    num_attention_heads: int = 8
    num_channels: int = 3
    image_size: int = 448
    patch_size: int = 14
    temporal_patch_size: int = 1
    rms_norm_eps: float = 1e-5
    qkv_bias: bool = False
    use_bias: bool = False
    hidden_act: str = "silu"
    hidden_stride: int = 2
    window_size: int = 112
    fullatt_block_indexes: list[int] | tuple[int, ...] | str | None = (7, 15, 23)
    preserve_original_pe: bool = True
    interpolate_pe_method: str = "two_dim"
    disable_rope: bool = False
    rope_theta: float = 10000.0
    vocab_size: int = 32768
    num_visual_indicator_tokens: int = 4
    tokenize_function: str = "softmax"
    tau: float = 1.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if isinstance(self.fullatt_block_indexes, str):  # released files may store "7|15|23"
            self.fullatt_block_indexes = [int(i) for i in self.fullatt_block_indexes.split("|") if i.strip()]
        elif self.fullatt_block_indexes is not None:
            self.fullatt_block_indexes = [int(i) for i in self.fullatt_block_indexes]
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})."
            )
        if self.interpolate_pe_method not in ("one_dim", "two_dim"):
            raise ValueError(f"interpolate_pe_method must be 'one_dim' or 'two_dim', got {self.interpolate_pe_method!r}.")
        if self.tokenize_function not in ("softmax", "gumbel_argmax", "st_argmax"):
            raise ValueError(
                f"tokenize_function must be 'softmax', 'gumbel_argmax' or 'st_argmax', got {self.tokenize_function!r}."
            )
        if self.window_size % (self.patch_size * self.hidden_stride):
            raise ValueError(
                f"window_size ({self.window_size}) must be a multiple of patch_size * hidden_stride "
                f"({self.patch_size * self.hidden_stride})."
            )


@strict
class OvisU1Config(PreTrainedConfig):
    r"""
    Configuration of [`OvisU1ForConditionalGeneration`]: the understanding half of Ovis-U1-3B, whose language model
    also provides the condition of the image generator. Defaults reproduce `AIDC-AI/Ovis-U1-3B`.

    Args:
        text_config (`dict` or `Qwen3Config`, *optional*):
            The Qwen3 language model. Defaults to Qwen3-1.7B.
        vision_config (`dict` or [`OvisU1VisionConfig`], *optional*):
            The vision encoder and visual tokenizer.
        image_token_id (`int`, *optional*, defaults to 151655):
            Placeholder token (`<|image_pad|>`) repeated once per visual token; its positions receive the visual
            embeddings.
        visual_indicator_token_ids (`list[int]`, *optional*, defaults to `[151652, 151653]`):
            Tokens that open and close an image (`<|vision_start|>`, `<|vision_end|>`). The i-th one is embedded with
            row `vision_config.vocab_size - num_visual_indicator_tokens - 1 + i` of the visual embedding table (the
            released model indexes one row below the reserved block, so the opening indicator shares its row with
            the last visual word; kept for weight compatibility).
        multimodal_max_length (`int`, *optional*, defaults to 2048):
            Maximal length of a merged text + visual sequence; longer inputs keep their last tokens.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`):
            Whether the language-model head shares the input embedding matrix.
    """

    model_type = "ovis_u1"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3", init_kwargs=QWEN3_1_7B_DEFAULTS),
        "vision_config": OvisU1VisionConfig,
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151655
    visual_indicator_token_ids: list[int] | tuple[int, ...] = (151652, 151653)
    multimodal_max_length: int = 2048
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if "llm_config" in kwargs or "visual_tokenizer_config" in kwargs:
            raise ValueError(
                "This is the configuration of a released Ovis-U1 checkpoint (with `llm_config`): convert the "
                "checkpoint first with `ovis-u1 convert OUTPUT --source FOLDER_OR_REPO`."
            )
        self.visual_indicator_token_ids = [int(i) for i in self.visual_indicator_token_ids]
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        reserved = self.vision_config.num_visual_indicator_tokens
        if not 0 < len(self.visual_indicator_token_ids) <= reserved:
            raise ValueError(
                f"visual_indicator_token_ids must name 1 to {reserved} tokens, got {self.visual_indicator_token_ids}."
            )

    # Both belong to the language model; tools such as `resize_token_embeddings` write them on the top config.
    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @hidden_size.setter
    def hidden_size(self, value: int):
        self.text_config.hidden_size = value

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size

    @vocab_size.setter
    def vocab_size(self, value: int):
        self.text_config.vocab_size = value


__all__ = ["OvisU1Config", "OvisU1VisionConfig"]

OvisU1Config.register_for_auto_class()

"""Tiny random Ovis-U1 understanding models for tests."""

import torch

from ovis_u1_hf.modeling.configuration_ovis_u1 import OvisU1Config
from ovis_u1_hf.modeling.modeling_ovis_u1 import OvisU1ForConditionalGeneration


VOCAB_SIZE = 128
IMAGE_START, IMAGE_END, IMAGE_PAD = 120, 121, 122


def tiny_config(vision=None, text=None, vocab_size=VOCAB_SIZE, **kwargs) -> OvisU1Config:
    text_config = dict(
        model_type="qwen3",
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
    )
    vision_config = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=56,  # a 4x4 learned position grid
        window_size=56,  # windows of 2x2 merged tokens
        fullatt_block_indexes=[1],
        vocab_size=40,
    )
    text_config.update(text or {})
    vision_config.update(vision or {})
    kwargs.setdefault("image_token_id", IMAGE_PAD)
    kwargs.setdefault("visual_indicator_token_ids", [IMAGE_START, IMAGE_END])
    return OvisU1Config(text_config=text_config, vision_config=vision_config, **kwargs)


def tiny_model(attn_implementation="sdpa", seed=0, **config_kwargs) -> OvisU1ForConditionalGeneration:
    torch.manual_seed(seed)
    model = OvisU1ForConditionalGeneration._from_config(
        tiny_config(**config_kwargs), attn_implementation=attn_implementation
    )
    # Default init leaves some weights at exactly 0 or 1; randomise them so every parameter matters in the tests.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def image_ids(num_visual_tokens: int) -> list[int]:
    return [IMAGE_START] + [IMAGE_PAD] * num_visual_tokens + [IMAGE_END]

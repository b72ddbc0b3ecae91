# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""Ovis-U1 understanding model: native-resolution AIMv2 encoder, visual tokenizer, visual embedding table, Qwen3."""

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm
from transformers.utils import ModelOutput, logging
from transformers.utils.generic import can_return_tuple, is_flash_attention_requested
from transformers.utils.output_capturing import capture_outputs
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from .configuration_ovis_u1 import OvisU1Config, OvisU1VisionConfig, check_pretrained_path


logger = logging.get_logger(__name__)


@dataclass
class OvisU1VisionOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(num_patches, hidden_size)`):
        Output of the last encoder block in the processor's patch order. The released model never applies its final
        norm to these features.
    visual_tokens (`torch.FloatTensor` of shape `(num_patches // hidden_stride**2, vocab_size)`):
        Probability rows over the visual vocabulary (the indicator columns are zero).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        Input of the first block and output of every block, each `(num_patches, hidden_size)` in the processor's
        patch order.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True` with eager attention):
        Attention weights of every block, each `(num_heads, num_patches, num_patches)` in the processor's patch order:
        row `i` holds the weights patch `i` gives every patch, zero outside its image (full-attention blocks) or its
        window (windowed blocks).
    """

    last_hidden_state: torch.FloatTensor | None = None
    visual_tokens: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# transformers 5.24 renamed the key/value cache, as a forward argument and as an output field, from
# `past_key_values` to `cache`. The cache travels through `**kwargs` under the caller's name and the outputs derive from
# the library's own classes, so only this name, read from the installed version, says which one is current.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class ImageOutputsAsTuple:
    """As transformers' multimodal outputs: in tuple form, the nested vision output is a tuple too."""

    def to_tuple(self) -> tuple:
        return tuple(self[key].to_tuple() if key == "image_outputs" else self[key] for key in self.keys())


@dataclass
class OvisU1ModelOutputWithPast(ImageOutputsAsTuple, BaseModelOutputWithPast):
    r"""
    Output of [`OvisU1Model`]: the language model's output (normed last hidden state, key/value cache, hidden states,
    attentions), the visual embeddings and the vision encoder's output.

    image_hidden_states (`torch.FloatTensor` of shape `(num_visual_tokens, hidden_size)`, *optional*):
        Visual embeddings of the images of the batch.
    image_outputs (`BaseModelOutputWithPooling`, *optional*):
        Output of [`~OvisU1Model.get_image_features`] (the vision encoder's last hidden state, the visual embeddings
        per image as `pooler_output`, and the encoder's `hidden_states` and `attentions` when asked for); `None`
        where the vision encoder did not run (no `pixel_values`).
    """

    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


@dataclass
class OvisU1CausalLMOutputWithPast(ImageOutputsAsTuple, CausalLMOutputWithPast):
    r"""
    Output of [`OvisU1ForConditionalGeneration`]: loss, logits, the language model's key/value cache, hidden states
    and attentions, the visual embeddings and the vision encoder's output.

    image_hidden_states (`torch.FloatTensor` of shape `(num_visual_tokens, hidden_size)`, *optional*):
        Visual embeddings of the images of the batch.
    image_outputs (`BaseModelOutputWithPooling`, *optional*):
        Output of [`~OvisU1Model.get_image_features`] (the vision encoder's last hidden state, the visual embeddings
        per image as `pooler_output`, and the encoder's `hidden_states` and `attentions` when asked for); `None`
        where the vision encoder did not run (no `pixel_values`).
    """

    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


class OvisU1VisionEmbeddings(nn.Module):
    """Patch embedding, RMS norm and (optionally) the learned position embedding resized to each image grid."""

    def __init__(self, config: OvisU1VisionConfig):
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.rms_norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if config.preserve_original_pe:
            self.num_positions = (config.image_size // config.patch_size) ** 2
            self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)

    def interpolate_position_embedding(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """The learned embedding resized to every `(t, h, w)` grid, laid out in the processor's patch order."""
        weight = self.position_embedding.weight.float()
        side = int(self.num_positions**0.5)
        stride = self.config.hidden_stride
        embeddings = []
        for t, h, w in grid_thw.tolist():
            if self.config.interpolate_pe_method == "two_dim":
                grid = weight.reshape(1, side, side, -1).permute(0, 3, 1, 2)
                grid = nn.functional.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
                pe = grid[0].permute(1, 2, 0).reshape(h * w, -1)
            else:
                pe = nn.functional.interpolate(weight.T[None], size=h * w, mode="linear", align_corners=False)
                pe = pe[0].T
            pe = pe.reshape(h // stride, stride, w // stride, stride, -1).permute(0, 2, 1, 3, 4)
            embeddings.append(pe.reshape(h * w, -1).repeat(t, 1))
        return torch.cat(embeddings)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        weight = self.patch_embedding.weight
        # A stride-p convolution over p x p patches is a matmul; as one it is much faster on packed rows.
        embeddings = nn.functional.linear(
            pixel_values.to(weight.dtype), weight.reshape(weight.shape[0], -1), self.patch_embedding.bias
        )
        embeddings = self.rms_norm(embeddings)
        if self.config.preserve_original_pe:
            embeddings = embeddings + self.interpolate_position_embedding(grid_thw).to(embeddings.dtype)
        return embeddings


class OvisU1VisionRotaryEmbedding(nn.Module):
    """2D rotary embedding: half of each head rotates with the patch row, half with the column."""

    def __init__(self, config: OvisU1VisionConfig):
        super().__init__()
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.theta = config.rope_theta

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.head_dim // 2
        # Computed on the fly rather than stored: a non-persistent buffer would need re-initialising after meta loading.
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, dim, 2, device=position_ids.device, dtype=torch.float) / dim))
        freqs = (position_ids[..., None].float() * inv_freq).flatten(1)  # (N, 2 * dim / 2): rows then columns
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb_vision(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    q_embed = q.float() * cos + rotate_half(q.float()) * sin
    k_embed = k.float() * cos + rotate_half(k.float()) * sin
    return q_embed.to(q.dtype), k_embed.to(k.dtype)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class OvisU1VisionAttention(nn.Module):
    """
    Non-causal attention within the segments (whole images or windows) delimited by `cu_seqlens`. The rows come in
    the processor's patch order; `window_rows`, when given, lists them in window order, the order `cu_seqlens` counts.
    """

    def __init__(self, config: OvisU1VisionConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.num_key_value_groups = 1
        self.attention_dropout = 0.0
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cu_seqlens: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        window_rows: torch.Tensor | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        seq_length = hidden_states.shape[0]
        query, key, value = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).unbind(1)
        if position_embeddings is not None:
            query, key = apply_rotary_pos_emb_vision(query, key, *position_embeddings)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        dropout = self.attention_dropout if self.training else 0.0
        attn_weights = None
        if is_flash_attention_requested(self.config):
            if window_rows is not None:
                query, key, value = query[window_rows], key[window_rows], value[window_rows]
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
            attn_output, _ = attention_interface(
                self,
                query.transpose(0, 1)[None],
                key.transpose(0, 1)[None],
                value.transpose(0, 1)[None],
                attention_mask=None,
                scaling=self.scaling,
                dropout=dropout,
                cu_seq_lens_q=cu_seqlens,
                cu_seq_lens_k=cu_seqlens,
                max_length_q=max_seqlen,
                max_length_k=max_seqlen,
                is_causal=False,
                **kwargs,
            )
            attn_output = attn_output[0]
            if window_rows is not None:
                attn_output = torch.empty_like(attn_output).index_copy_(0, window_rows, attn_output)
        else:
            # Windows come in a handful of sizes: attend over all segments of one size in a single batched call.
            attn_output = torch.empty_like(query)
            for index in segment_indices(cu_seqlens):
                if window_rows is not None:
                    index = window_rows[index]
                q, k, v = (x[index].transpose(1, 2) for x in (query, key, value))  # (segments, heads, len, dim)
                out, weights = attention_interface(
                    self,
                    q,
                    k,
                    v,
                    attention_mask=None,
                    scaling=self.scaling,
                    dropout=dropout,
                    is_causal=False,
                    output_attentions=output_attentions,
                )
                attn_output[index] = out.to(attn_output.dtype)
                if output_attentions and weights is not None:
                    if attn_weights is None:
                        attn_weights = weights.new_zeros(self.num_heads, seq_length, seq_length)
                    # Each segment's (length, length) block goes where its rows and columns stand.
                    shape = (*index.shape, index.shape[-1])
                    rows, cols = index[:, :, None].expand(shape), index[:, None, :].expand(shape)
                    attn_weights[:, rows, cols] = weights.transpose(0, 1).to(attn_weights.dtype)
        return self.proj(attn_output.reshape(seq_length, -1)), attn_weights


def segment_indices(cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    """Row indices of the segments of `cu_seqlens`, one `(num_segments, length)` tensor per distinct length."""
    starts_by_length = defaultdict(list)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            starts_by_length[end - start].append(start)
    return [
        torch.tensor(starts, device=cu_seqlens.device)[:, None] + torch.arange(length, device=cu_seqlens.device)
        for length, starts in starts_by_length.items()
    ]


class OvisU1VisionMLP(nn.Module):
    def __init__(self, config: OvisU1VisionConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.use_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.use_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.use_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class OvisU1VisionEncoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: OvisU1VisionConfig):
        super().__init__()
        self.rms_norm1 = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attention = OvisU1VisionAttention(config)
        self.rms_norm2 = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = OvisU1VisionMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cu_seqlens: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_output, _ = self.attention(
            self.rms_norm1(hidden_states), cu_seqlens=cu_seqlens, position_embeddings=position_embeddings, **kwargs
        )
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.rms_norm2(hidden_states))


class OvisU1PreTrainedModel(PreTrainedModel):
    config: OvisU1Config
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["OvisU1VisionEncoderLayer", "Qwen3DecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The decoding steps, which never see images, compile without graph breaks; the vision tower (its packed segments
    # depend on the data) runs in the prefill only, which generate does not compile.
    _can_compile_fullgraph = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """
        As [`~PreTrainedModel.from_pretrained`], with three differences: weights load from safetensors only (a pickled
        `.bin` file is never unpickled), a local folder that does not exist is a clear error, and so are missing
        weights (a model with some of its weights left at random would generate noise).
        """
        pretrained_model_name_or_path = check_pretrained_path(pretrained_model_name_or_path)
        if kwargs.get("use_safetensors") is None:
            kwargs["use_safetensors"] = True
        if kwargs.get("use_safetensors") is not True:
            raise ValueError("Ovis-U1 weights load from safetensors files only: leave `use_safetensors` unset.")
        with_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise OSError(
                f"{pretrained_model_name_or_path} lacks {len(missing)} weight(s) of {cls.__name__}: "
                f"{', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}. The folder is incomplete: convert "
                "or download it again."
            )
        return (model, info) if with_info else model


def hard_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """One-hot of the argmax in the forward pass, softmax gradients in the backward pass."""
    soft = logits.softmax(dim)
    hard = torch.zeros_like(soft).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0)
    return hard - soft.detach() + soft


class OvisU1VisionModel(OvisU1PreTrainedModel):
    """The visual tokenizer: the native-resolution AIMv2 encoder and its head over merged patch groups."""

    config: OvisU1VisionConfig
    main_input_name = "pixel_values"
    _no_split_modules = ["OvisU1VisionEncoderLayer"]
    _can_record_outputs = {"hidden_states": OvisU1VisionEncoderLayer, "attentions": OvisU1VisionAttention}

    def __init__(self, config: OvisU1VisionConfig):
        super().__init__(config)
        self.embeddings = OvisU1VisionEmbeddings(config)
        self.rotary_emb = None if config.disable_rope else OvisU1VisionRotaryEmbedding(config)
        self.layers = nn.ModuleList([OvisU1VisionEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        merged_size = config.hidden_size * config.hidden_stride**2
        self.head_linear = nn.Linear(merged_size, config.vocab_size - config.num_visual_indicator_tokens, bias=False)
        self.head_norm = nn.LayerNorm(config.vocab_size - config.num_visual_indicator_tokens)
        self.gradient_checkpointing = False
        self.post_init()

    def check_inputs(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> None:
        config = self.config
        row_size = config.num_channels * config.temporal_patch_size * config.patch_size**2
        if pixel_values.ndim != 2 or pixel_values.shape[1] != row_size:
            raise ValueError(
                f"pixel_values must have shape (num_patches, {row_size}) as produced by OvisU1ImageProcessor, "
                f"got {tuple(pixel_values.shape)}."
            )
        if grid_thw is None or grid_thw.ndim != 2 or grid_thw.shape[1] != 3:
            shape = None if grid_thw is None else tuple(grid_thw.shape)
            raise ValueError(f"image_grid_thw must have shape (num_images, 3), got {shape}.")
        if (grid_thw[:, 1:] % config.hidden_stride).any() or (grid_thw <= 0).any():
            raise ValueError(f"Every grid (t, h, w) must be positive with h and w multiples of {config.hidden_stride}.")
        if int(grid_thw.prod(-1).sum()) != pixel_values.shape[0]:
            raise ValueError(
                f"image_grid_thw describe {int(grid_thw.prod(-1).sum())} patches but pixel_values has "
                f"{pixel_values.shape[0]} rows."
            )

    def tokenize(self, logits: torch.Tensor) -> torch.Tensor:
        if self.config.tokenize_function == "softmax":
            # In float32 as in the released model: low-precision softmax over 32k words loses the small probabilities.
            return nn.functional.softmax(logits, dim=-1, dtype=torch.float32).to(logits.dtype)
        if self.config.tokenize_function == "gumbel_argmax":
            return nn.functional.gumbel_softmax(logits, tau=self.config.tau, hard=True)
        return hard_softmax(logits)

    @capture_outputs
    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, **kwargs) -> OvisU1VisionOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(num_patches, num_channels * patch_size**2)`):
            Packed patches of all images, as produced by [`OvisU1ImageProcessor`].
        grid_thw (`torch.LongTensor` of shape `(num_images, 3)`):
            Patch grid `(t, h, w)` of each image.
        output_hidden_states (`bool`, *optional*):
            Also return the input of the first block and the output of every block.
        output_attentions (`bool`, *optional*):
            Also return the attention weights of every block (eager attention only, as in every transformers model).
        """
        self.check_inputs(pixel_values, grid_thw)
        config = self.config
        merge_unit = config.hidden_stride**2
        hidden_states = self.embeddings(pixel_values, grid_thw)
        seq_length = hidden_states.shape[0]
        # Said to every attention block, so that only a requested attention map is assembled.
        kwargs["output_attentions"] = bool(kwargs.get("output_attentions", config.output_attentions))

        position_embeddings = None
        if self.rotary_emb is not None:
            position_ids = get_vision_position_ids(grid_thw, config.hidden_stride)
            position_embeddings = self.rotary_emb(position_ids.to(hidden_states.device))

        cu_seqlens = get_vision_cu_seqlens(grid_thw).to(hidden_states.device)
        full_attention = config.fullatt_block_indexes
        window_rows = None
        if full_attention is not None:
            # Windowed blocks attend window by window (windows are made of merged patch groups and never cross
            # images). The rows stay in the processor's order through every block, so that the hidden states
            # recorded from the blocks are in that order; a windowed block looks its windows' rows up in
            # `window_rows`, the rows listed window after window.
            window_index, cu_window_seqlens = get_vision_window_index(
                grid_thw, config.hidden_stride, config.window_size, config.patch_size
            )
            window_index = window_index.to(hidden_states.device)
            window_rows = window_index[:, None] * merge_unit + torch.arange(merge_unit, device=window_index.device)
            window_rows = window_rows.flatten()
            cu_window_seqlens = cu_window_seqlens.to(hidden_states.device)

        for index, layer in enumerate(self.layers):
            windowed = full_attention is not None and index not in full_attention
            hidden_states = layer(
                hidden_states,
                cu_seqlens=cu_window_seqlens if windowed else cu_seqlens,
                position_embeddings=position_embeddings,
                window_rows=window_rows if windowed else None,
                **kwargs,
            )

        # QUIRK: the released model takes features from the last block without its final norm.
        logits = self.head_norm(self.head_linear(hidden_states.reshape(seq_length // merge_unit, -1)))
        visual_tokens = self.tokenize(logits)
        visual_tokens = nn.functional.pad(visual_tokens, (0, config.num_visual_indicator_tokens))
        return OvisU1VisionOutput(last_hidden_state=hidden_states, visual_tokens=visual_tokens)


class OvisU1VisualEmbeddingTable(nn.Embedding):
    """Embeds visual words; a probability row over the vocabulary embeds as the matching mix of table rows."""

    def forward(self, visual_tokens: torch.Tensor) -> torch.Tensor:
        if not visual_tokens.is_floating_point():
            return super().forward(visual_tokens)
        return torch.matmul(visual_tokens.to(self.weight.dtype), self.weight)


class OvisU1Model(OvisU1PreTrainedModel):
    """Vision tower, visual embedding table and Qwen3 language model, without the language-model head."""

    def __init__(self, config: OvisU1Config):
        super().__init__(config)
        self.vision_tower = OvisU1VisionModel(config.vision_config)
        self.visual_embeddings_table = OvisU1VisualEmbeddingTable(
            config.vision_config.vocab_size, config.text_config.hidden_size
        )
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, **kwargs
    ) -> BaseModelOutputWithPooling:
        """
        Runs the visual tokenizer and embeds its visual tokens with the visual embedding table.

        Returns:
            [`BaseModelOutputWithPooling`]: `last_hidden_state`, the vision encoder's output `(num_patches, hidden)`;
            `pooler_output`, one `(num_visual_tokens, text_hidden_size)` tensor of visual embeddings per image;
            `hidden_states` and `attentions` of the encoder when `output_hidden_states=True` /
            `output_attentions=True` (see [`OvisU1VisionModel`]).
        """
        vision_outputs = self.vision_tower(pixel_values, image_grid_thw, return_dict=True, **kwargs)
        embeddings = self.visual_embeddings_table(vision_outputs.visual_tokens)
        sizes = (image_grid_thw.prod(-1) // self.config.vision_config.hidden_stride**2).tolist()
        return BaseModelOutputWithPooling(
            last_hidden_state=vision_outputs.last_hidden_state,
            pooler_output=embeddings.split(sizes),
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
        )

    def indicator_rows(self) -> list[int]:
        # QUIRK: the released model embeds its i-th indicator with row V - reserved - 1 + i, one row below the
        # reserved block, so the opening indicator shares its row with the last visual word.
        vision = self.config.vision_config
        first = vision.vocab_size - vision.num_visual_indicator_tokens - 1
        return [first + i for i in range(len(self.config.visual_indicator_token_ids))]

    def token_mask(
        self, token_id: int, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor
    ) -> torch.BoolTensor:
        """Where `token_id` stands: read from `input_ids`, or else found in `inputs_embeds` by its input embedding."""
        if input_ids is not None:
            return input_ids == token_id
        embedding = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
        return (inputs_embeds == embedding.to(inputs_embeds.dtype)).all(-1)

    def merge_image_features(
        self,
        image_mask: torch.BoolTensor,
        opening_mask: torch.BoolTensor,
        inputs_embeds: torch.Tensor,
        image_features: tuple[torch.Tensor, ...],
    ) -> torch.Tensor:
        """Writes each image's visual embeddings at its placeholder positions of `inputs_embeds`."""
        flat = torch.cat(image_features).to(inputs_embeds.device, inputs_embeds.dtype)
        if int(image_mask.sum()) == flat.shape[0]:
            return inputs_embeds.masked_scatter(image_mask[..., None], flat)
        # A sequence cut to `multimodal_max_length` keeps its last tokens, so its first image may have lost its
        # opening indicator and leading placeholders: that run receives the image's trailing visual tokens, as in
        # the released model. Every other run must match its image exactly.
        features = list(image_features)
        inputs_embeds = inputs_embeds.clone()
        for row in range(image_mask.shape[0]):
            positions = image_mask[row].nonzero().flatten()
            if positions.numel() == 0:
                continue
            for run in torch.tensor_split(positions, (positions.diff() != 1).nonzero().flatten() + 1):
                if not features:
                    raise ValueError("The input ids hold more image placeholder runs than there are images.")
                feature = features.pop(0).to(inputs_embeds.device, inputs_embeds.dtype)
                cut = run[0] == 0 or not opening_mask[row, run[0] - 1]
                if len(run) > len(feature) or (len(run) < len(feature) and not cut):
                    raise ValueError(
                        f"An image placeholder run has {len(run)} tokens but its image yields {len(feature)}."
                    )
                inputs_embeds[row, run] = feature[len(feature) - len(run) :]
        if features:
            raise ValueError(f"{len(features)} image(s) have no placeholder tokens in the input ids.")
        return inputs_embeds

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        image_hidden_states: torch.FloatTensor | None = None,
        **kwargs,
    ) -> OvisU1ModelOutputWithPast:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(num_patches, num_channels * patch_size**2)`, *optional*):
            Packed patches of all images of the batch, from [`OvisU1ImageProcessor`].
        image_grid_thw (`torch.LongTensor` of shape `(num_images, 3)`, *optional*):
            Patch grid of each image; required with `pixel_values`.
        inputs_embeds (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`, *optional*):
            Input embeddings instead of `input_ids`; with `pixel_values`, the image placeholder and indicator
            positions are those holding the input embeddings of their tokens.
        image_hidden_states (`torch.FloatTensor` of shape `(num_visual_tokens, hidden_size)`, *optional*):
            Visual embeddings of the images computed before (this output's `image_hidden_states`, or the
            concatenated `pooler_output` of `get_image_features`), instead of `pixel_values`: an image seen again
            skips the vision tower. With `image_grid_thw`, sequences cut by truncation are handled as with
            `pixel_values`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds.")
        if input_ids is not None and input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch_size, sequence_length), got {tuple(input_ids.shape)}.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        if pixel_values is not None and image_hidden_states is not None:
            raise ValueError("Pass `pixel_values` or `image_hidden_states`, not both.")
        image_features = image_outputs = None
        if pixel_values is not None or image_hidden_states is not None:
            name = "pixel_values" if pixel_values is not None else "image_hidden_states"
            image_mask = self.token_mask(self.config.image_token_id, input_ids, inputs_embeds)
            if not image_mask.any():
                # Checked before the vision tower runs: its features would have nowhere to go.
                raise ValueError(
                    f"{name} were given but the images have no placeholder tokens in input_ids: mark each image "
                    "with `<image>` in the text given to the processor (or leave the images out for a text-only "
                    "prompt)."
                )
            opening_mask = self.token_mask(self.config.visual_indicator_token_ids[0], input_ids, inputs_embeds)
            if pixel_values is not None:
                # Only the output switches reach the vision tower: `kwargs` also carry the language model's cache and
                # the Trainer's loss arguments.
                switches = ("output_attentions", "output_hidden_states")
                vision_kwargs = {key: kwargs[key] for key in switches if key in kwargs}
                image_outputs = self.get_image_features(pixel_values, image_grid_thw, return_dict=True, **vision_kwargs)
                image_features = image_outputs.pooler_output
            elif image_grid_thw is not None:
                sizes = (image_grid_thw.prod(-1) // self.config.vision_config.hidden_stride**2).tolist()
                image_features = image_hidden_states.split(sizes)
            else:
                image_features = (image_hidden_states,)
            inputs_embeds = self.merge_image_features(image_mask, opening_mask, inputs_embeds, image_features)
            image_features = torch.cat(image_features)
        # Without a branch on the data, so that a decoding step compiles as one graph.
        for token_id, row in zip(self.config.visual_indicator_token_ids, self.indicator_rows()):
            indicator = self.token_mask(token_id, input_ids, inputs_embeds)
            embedding = self.visual_embeddings_table.weight[row].to(inputs_embeds.dtype)
            inputs_embeds = torch.where(indicator[..., None], embedding, inputs_embeds)

        if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
            # Left-padded rows count positions from their first real token, as generation does.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -inputs_embeds.shape[1] :]

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        # The language model's output holds its fields under the installed version's names (see `CACHE_NAME`).
        return OvisU1ModelOutputWithPast(**outputs, image_hidden_states=image_features, image_outputs=image_outputs)


class OvisU1ForConditionalGeneration(OvisU1PreTrainedModel, GenerationMixin):
    """Ovis-U1 understanding model with a language-model head; also provides the image-generation condition."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # The language model's own plans come from its config (`base_model_tp_plan` / `base_model_pp_plan`).
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: OvisU1Config):
        super().__init__(config)
        self.model = OvisU1Model(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `register_for_auto_class` names one Auto class in `auto_map`; this class serves the task's class as well.
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map["AutoModelForImageTextToText"] = f"{type(self).__module__.split('.')[-1]}.{type(self).__name__}"
        self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_image_features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, **kwargs
    ) -> BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, image_grid_thw, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> OvisU1CausalLMOutputWithPast:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(num_patches, num_channels * patch_size**2)`, *optional*):
            Packed patches of all images of the batch, from [`OvisU1ImageProcessor`].
        image_grid_thw (`torch.LongTensor` of shape `(num_images, 3)`, *optional*):
            Patch grid of each image; required with `pixel_values`.
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Targets for the next-token loss; `-100` is ignored.

        Example:

        ```python
        >>> import ovis_u1_hf  # registers the classes; or pass trust_remote_code=True
        >>> from PIL import Image
        >>> from transformers import AutoModel, AutoProcessor

        >>> model = AutoModel.from_pretrained("path/to/converted", subfolder="text_encoder")
        >>> processor = AutoProcessor.from_pretrained("path/to/converted", subfolder="processor")
        >>> messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
        >>> prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        >>> inputs = processor(images=[Image.open("cat.png")], text=prompt, return_tensors="pt")
        >>> output = model.generate(**inputs, max_new_tokens=64)
        >>> processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        ```"""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])

        loss = None
        if labels is not None:
            # `kwargs` carries the loss arguments of the Trainer (`num_items_in_batch`, `shift_labels`).
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )

        return OvisU1CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            image_outputs=outputs.image_outputs,
            **{CACHE_NAME: outputs.get(CACHE_NAME)},
        )

    def get_generation_condition(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        image_hidden_states: torch.FloatTensor | None = None,
    ) -> torch.FloatTensor:
        """
        The condition of the image generator: for each token, the normed output of the last language-model layer
        concatenated with the un-normed output of the layer before it, `(batch_size, sequence_length, 2 * hidden)`.
        The images come as `pixel_values` or as visual embeddings computed before (`image_hidden_states`, see
        [`OvisU1Model.forward`]).
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            image_hidden_states=image_hidden_states,
            attention_mask=attention_mask,
            use_cache=False,
            output_hidden_states=True,
            return_dict=True,
        )
        return torch.cat([outputs.last_hidden_state, outputs.hidden_states[-2]], dim=-1)


__all__ = ["OvisU1PreTrainedModel", "OvisU1VisionModel", "OvisU1Model", "OvisU1ForConditionalGeneration"]

OvisU1ForConditionalGeneration.register_for_auto_class("AutoModel")

# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""The Ovis-U1 visual decoder: a bidirectional token refiner followed by an MMDiT with MMDiT-X double blocks."""

import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.loaders import PeftAdapterMixin
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin, FeedForward
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import (
    CombinedTimestepGuidanceTextProjEmbeddings,
    CombinedTimestepTextProjEmbeddings,
    PixArtAlphaTextProjection,
    apply_rotary_emb,
)
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import (
    AdaLayerNormContinuous,
    AdaLayerNormZero,
    AdaLayerNormZeroSingle,
    RMSNorm,
    SD35AdaLayerNormZeroX,
)
from diffusers.models.transformers.transformer_flux import FluxPosEmbed
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAdaNorm
from diffusers.utils.torch_utils import maybe_allow_in_graph


def _apply_rotary(x: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """`apply_rotary_emb` on (B, S, H, D) for shared (S, D) or per-sample (B, S, D) tables."""
    cos, sin = rotary_emb
    if cos.ndim == 2:
        return apply_rotary_emb(x, rotary_emb, sequence_dim=1)
    # Per-sample positions: fold the batch into the sequence so diffusers' (S, D) form applies unchanged.
    folded = apply_rotary_emb(x.flatten(0, 1)[None], (cos.flatten(0, 1), sin.flatten(0, 1)), sequence_dim=1)
    return folded.view_as(x)


def _key_padding_mask(*masks: torch.Tensor | None, lengths: list[int], batch_size: int, device) -> torch.Tensor | None:
    """Concatenates per-segment (B, S_i) key masks (None = all valid) into a (B, 1, 1, S) boolean mask, or None."""
    if all(mask is None for mask in masks):
        return None
    parts = [
        torch.ones(batch_size, length, dtype=torch.bool, device=device)
        if mask is None
        else mask.to(device, torch.bool)
        for mask, length in zip(masks, lengths)
    ]
    return torch.cat(parts, dim=1)[:, None, None, :]


class OvisU1AttnProcessor:
    """Attention over `dispatch_attention_fn`, so the backend is selectable (native SDPA by default).

    Keys may be masked with a boolean (B, 1, 1, S) key-padding mask; every query keeps at least one valid key.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: "OvisU1Attention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key, value = (x.unflatten(-1, (-1, attn.head_dim)) for x in (query, key, value))
        if attn.norm_q is not None:
            # Back to v's dtype, as released: the norm weights may be kept in float32 (layerwise casting).
            query, key = attn.norm_q(query).to(value.dtype), attn.norm_k(key).to(value.dtype)

        if encoder_hidden_states is not None:
            if attn.fused_projections:
                projections = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
            else:
                projections = (
                    proj(encoder_hidden_states) for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
                )
            encoder_query, encoder_key, encoder_value = (x.unflatten(-1, (-1, attn.head_dim)) for x in projections)
            encoder_query = attn.norm_added_q(encoder_query).to(encoder_value.dtype)
            encoder_key = attn.norm_added_k(encoder_key).to(encoder_value.dtype)
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)

        if image_rotary_emb is not None:
            query, key = _apply_rotary(query, image_rotary_emb), _apply_rotary(key, image_rotary_emb)

        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config if attn.context_parallel else None,
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            return attn.to_out[0](hidden_states.contiguous()), attn.to_add_out(encoder_hidden_states.contiguous())
        if attn.pre_only:
            return hidden_states
        return attn.to_out[0](hidden_states)


class OvisU1Attention(nn.Module, AttentionModuleMixin):
    """Multi-head attention with optional QK RMSNorm, a second (text) stream and an output projection.

    Hand-written rather than `FluxAttention` because the refiner has no QK norm, the image self-attention of the
    double blocks needs an output projection without a second stream, and positions may differ per sample.

    Args:
        query_dim (`int`): Width of the (image) stream.
        heads (`int`): Number of heads.
        dim_head (`int`): Width of a head.
        bias (`bool`): Whether the query/key/value projections have a bias.
        qk_norm (`bool`): Whether queries and keys are RMS-normalised over the head dimension.
        added_kv_proj_dim (`int`, *optional*): Width of a second stream attended jointly (the text in double blocks).
        added_proj_bias (`bool`): Whether that stream's query/key/value projections have a bias.
        pre_only (`bool`): Whether to return the attention output without an output projection (single blocks).
        eps (`float`): Epsilon of the QK norms.
        context_parallel (`bool`): Whether the attention takes part in context parallelism (sequences split across
            processes). The refiner's does not: it sees the whole condition on every process.
    """

    _default_processor_cls = OvisU1AttnProcessor
    _available_processors = [OvisU1AttnProcessor]

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        bias: bool = True,
        qk_norm: bool = True,
        added_kv_proj_dim: int | None = None,
        added_proj_bias: bool = True,
        pre_only: bool = False,
        eps: float = 1e-6,
        context_parallel: bool = True,
        processor=None,
    ):
        super().__init__()
        self.context_parallel = context_parallel
        self.head_dim = dim_head
        self.heads = heads
        self.inner_dim = heads * dim_head
        self.use_bias = bias
        self.added_kv_proj_dim = added_kv_proj_dim
        self.added_proj_bias = added_proj_bias
        self.pre_only = pre_only

        self.to_q = nn.Linear(query_dim, self.inner_dim, bias=bias)
        self.to_k = nn.Linear(query_dim, self.inner_dim, bias=bias)
        self.to_v = nn.Linear(query_dim, self.inner_dim, bias=bias)
        self.norm_q = RMSNorm(dim_head, eps=eps) if qk_norm else None
        self.norm_k = RMSNorm(dim_head, eps=eps) if qk_norm else None
        if not pre_only:
            self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, query_dim)])
        if added_kv_proj_dim is not None:
            self.add_q_proj = nn.Linear(added_kv_proj_dim, self.inner_dim, bias=added_proj_bias)
            self.add_k_proj = nn.Linear(added_kv_proj_dim, self.inner_dim, bias=added_proj_bias)
            self.add_v_proj = nn.Linear(added_kv_proj_dim, self.inner_dim, bias=added_proj_bias)
            self.norm_added_q = RMSNorm(dim_head, eps=eps)
            self.norm_added_k = RMSNorm(dim_head, eps=eps)
            self.to_add_out = nn.Linear(self.inner_dim, added_kv_proj_dim)

        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.processor(self, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


@maybe_allow_in_graph
class OvisU1TokenRefinerBlock(nn.Module):
    """Pre-norm self-attention and SiLU MLP, their residual branches gated (no shift, no scale) by the condition."""

    # HunyuanVideo's refiner block computes the same, but over the legacy `Attention`, which ignores the selected
    # attention backend.

    def __init__(self, dim: int, num_attention_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = OvisU1Attention(
            dim, num_attention_heads, dim // num_attention_heads, qk_norm=False, context_parallel=False
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ff = FeedForward(dim, mult=mlp_ratio, activation_fn="linear-silu")
        self.gates = HunyuanVideoAdaNorm(dim, 2 * dim)

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        gate_msa, gate_mlp = self.gates(temb)
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states), attention_mask=attention_mask) * gate_msa
        return hidden_states + self.ff(self.norm2(hidden_states)) * gate_mlp


class OvisU1TokenRefiner(nn.Module):
    """The bidirectional token refiner: non-causal transformer over a learned class token and the projected condition.

    HunyuanVideo's token refiner without its timestep input (so the output is the same at every sampling step) and
    with a class token, whose output is the pooled condition.
    """

    def __init__(self, in_channels: int, dim: int, num_attention_heads: int, num_layers: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.pooled_embedder = PixArtAlphaTextProjection(in_channels, dim, act_fn="silu")
        self.proj_in = nn.Linear(in_channels, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            [OvisU1TokenRefinerBlock(dim, num_attention_heads, mlp_ratio) for _ in range(num_layers)]
        )
        self.gradient_checkpointing = False

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is None:
            pooled = hidden_states.mean(dim=1)
        else:
            # A masked mean equals the released unmasked mean over the sample alone.
            weights = attention_mask.to(hidden_states.device, torch.float32)[..., None]
            pooled = ((hidden_states.float() * weights).sum(dim=1) / weights.sum(dim=1)).to(hidden_states.dtype)
        temb = self.pooled_embedder(pooled)

        hidden_states = self.proj_in(hidden_states)
        cls_token = self.cls_token.to(hidden_states.dtype).expand(hidden_states.shape[0], -1, -1)
        hidden_states = torch.cat([cls_token, hidden_states], dim=1)
        if attention_mask is not None:
            attention_mask = F.pad(attention_mask.to(hidden_states.device, torch.bool), (1, 0), value=True)
            attention_mask = attention_mask[:, None, None, :]

        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states, temb, attention_mask)
            else:
                hidden_states = block(hidden_states, temb, attention_mask)
        return hidden_states[:, 1:], hidden_states[:, 0]


@maybe_allow_in_graph
class OvisU1TransformerBlock(nn.Module):
    """MMDiT-X double block (SD3.5): FLUX's joint text-image attention plus a second, image-only self-attention.

    SD3's dual-attention `JointTransformerBlock` has no rotary positions, so the FLUX block is extended instead.
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
    ):
        super().__init__()
        self.norm1 = SD35AdaLayerNormZeroX(dim)
        self.norm1_context = AdaLayerNormZero(dim)
        self.attn = OvisU1Attention(
            dim,
            num_attention_heads,
            attention_head_dim,
            bias=qkv_bias,
            added_kv_proj_dim=dim,
            added_proj_bias=qkv_bias,
        )
        self.attn2 = OvisU1Attention(dim, num_attention_heads, attention_head_dim, bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, dim_out=dim, mult=mlp_ratio, activation_fn="gelu-approximate")
        self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff_context = FeedForward(dim, dim_out=dim, mult=mlp_ratio, activation_fn="gelu-approximate")

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        norm_hidden_states, gate_msa, shift_mlp, scale_mlp, gate_mlp, norm_hidden_states2, gate_msa2 = self.norm1(
            hidden_states, emb=temb
        )
        norm_encoder_hidden_states, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(
            encoder_hidden_states, emb=temb
        )

        attn_output, context_attn_output = self.attn(
            norm_hidden_states,
            encoder_hidden_states=norm_encoder_hidden_states,
            attention_mask=attention_mask,
            image_rotary_emb=image_rotary_emb,
        )
        text_seq_len = encoder_hidden_states.shape[1]
        image_rotary_emb = tuple(freqs[..., text_seq_len:, :] for freqs in image_rotary_emb)
        self_attn_output = self.attn2(
            norm_hidden_states2, attention_mask=image_attention_mask, image_rotary_emb=image_rotary_emb
        )

        hidden_states = hidden_states + gate_msa[:, None] * attn_output
        hidden_states = hidden_states + gate_msa2[:, None] * self_attn_output
        norm_hidden_states = self.norm2(hidden_states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        hidden_states = hidden_states + gate_mlp[:, None] * self.ff(norm_hidden_states)

        encoder_hidden_states = encoder_hidden_states + c_gate_msa[:, None] * context_attn_output
        norm_encoder_hidden_states = self.norm2_context(encoder_hidden_states)
        norm_encoder_hidden_states = norm_encoder_hidden_states * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        encoder_hidden_states = encoder_hidden_states + c_gate_mlp[:, None] * self.ff_context(
            norm_encoder_hidden_states
        )
        if encoder_hidden_states.dtype == torch.float16:
            encoder_hidden_states = encoder_hidden_states.clip(-65504, 65504)
        return encoder_hidden_states, hidden_states


@maybe_allow_in_graph
class OvisU1SingleTransformerBlock(nn.Module):
    """FLUX single-stream block over the joint text-image sequence: attention and MLP in parallel.

    Takes and returns the two streams apart, as FLUX's block does, so that diffusers' block-level caches (which
    keep residuals per stream) apply to it as to the double blocks.
    """

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.mlp_hidden_dim = int(dim * mlp_ratio)
        self.norm = AdaLayerNormZeroSingle(dim)
        self.proj_mlp = nn.Linear(dim, self.mlp_hidden_dim)
        self.act_mlp = nn.GELU(approximate="tanh")
        self.proj_out = nn.Linear(dim + self.mlp_hidden_dim, dim)
        self.attn = OvisU1Attention(dim, num_attention_heads, attention_head_dim, pre_only=True)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_seq_len = encoder_hidden_states.shape[1]
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
        attn_output = self.attn(norm_hidden_states, attention_mask=attention_mask, image_rotary_emb=image_rotary_emb)
        mlp_hidden_states = self.act_mlp(self.proj_mlp(norm_hidden_states))
        hidden_states = hidden_states + gate[:, None] * self.proj_out(
            torch.cat([attn_output, mlp_hidden_states], dim=2)
        )
        if hidden_states.dtype == torch.float16:
            hidden_states = hidden_states.clip(-65504, 65504)
        return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


# What diffusers' block-level caches (first-block cache, MagCache) need to know: where each block returns the image
# stream (`hidden_states`, image and context tokens) and the text stream.
for _block_class in (OvisU1TransformerBlock, OvisU1SingleTransformerBlock):
    TransformerBlockRegistry.register(
        _block_class, TransformerBlockMetadata(return_hidden_states_index=1, return_encoder_hidden_states_index=0)
    )


class OvisU1PosEmbed(FluxPosEmbed):
    """FLUX's interleaved multi-axis rotary table, for shared (S, n_axes) or per-sample (B, S, n_axes) positions."""

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs_cos, freqs_sin = super().forward(ids.reshape(-1, ids.shape[-1]))
        return freqs_cos.unflatten(0, ids.shape[:-1]), freqs_sin.unflatten(0, ids.shape[:-1])


# The same check as `modeling/configuration_ovis_u1.py`'s: a saved folder copies this module alone into
# `transformer/`, where it cannot import the understanding model's modules.
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


def raise_on_missing_weights(path, name: str, missing) -> None:
    """A model with some weights left at random would generate noise: missing weights are an error, not a warning."""
    missing = sorted(missing)
    if missing:
        raise OSError(
            f"{path} lacks {len(missing)} weight(s) of {name}: {', '.join(missing[:10])}"
            f"{', ...' if len(missing) > 10 else ''}. The folder is incomplete: convert or download it again."
        )


class OvisU1Transformer2DModel(ModelMixin, ConfigMixin, PeftAdapterMixin, AttentionMixin, CacheMixin):
    r"""
    The visual decoder of Ovis-U1: a bidirectional token refiner over the LLM condition, then an MMDiT of MMDiT-X
    double blocks (joint text-image attention plus image self-attention) and single blocks, predicting a flow velocity
    for packed latents.

    Args:
        in_channels (`int`, defaults to 16):
            Channels of a packed latent token (4 VAE channels x 2 x 2).
        out_channels (`int`, *optional*, defaults to 16):
            Channels of a predicted token. Defaults to `in_channels`.
        num_layers (`int`, defaults to 6):
            Number of double blocks.
        num_single_layers (`int`, defaults to 12):
            Number of single blocks.
        attention_head_dim (`int`, defaults to 128):
            Width of an attention head in the decoder; must equal `sum(axes_dims_rope)`.
        num_attention_heads (`int`, defaults to 12):
            Number of attention heads in the decoder. The decoder width is `num_attention_heads * attention_head_dim`.
        joint_attention_dim (`int`, defaults to 4096):
            Width of the condition (`encoder_hidden_states`) fed to the refiner.
        mlp_ratio (`float`, defaults to 4.0):
            Hidden width of the decoder MLPs relative to the decoder width.
        axes_dims_rope (`tuple[int]`, defaults to `(16, 56, 56)`):
            Rotary dimensions of the position axes (index, row, column).
        theta (`int`, defaults to 10000):
            Base of the rotary frequencies.
        qkv_bias (`bool`, defaults to `True`):
            Whether the double blocks' query/key/value projections have a bias.
        refiner_num_layers (`int`, defaults to 2):
            Number of refiner blocks.
        refiner_num_attention_heads (`int`, defaults to 24):
            Number of attention heads in the refiner (its width is the decoder width).
        refiner_mlp_ratio (`float`, defaults to 4.0):
            Hidden width of the refiner MLPs relative to the decoder width.
        guidance_embeds (`bool`, defaults to `False`):
            Whether the model takes an embedded guidance scale (`guidance`) as input.
    """

    # Saved configs name this class in `auto_map`, so that `diffusers.AutoModel.from_pretrained(folder,
    # trust_remote_code=True)` loads it from the folder's copy of this file.
    _auto_class = "AutoModel"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["OvisU1TransformerBlock", "OvisU1SingleTransformerBlock", "OvisU1TokenRefinerBlock"]
    # Layerwise casting keeps the input and condition embeddings and every norm (with the adaLN modulations) in the
    # compute dtype.
    _skip_layerwise_casting_patterns = ["pos_embed", "x_embedder", "time_text_embed", "pooled_embedder", "norm"]
    _repeated_blocks = ["OvisU1TransformerBlock", "OvisU1SingleTransformerBlock"]
    # Context parallelism splits every token stream along the sequence at the input (shared 2D positions) and
    # gathers the predicted image tokens. The refiner is not split: under it, pass the outputs of `refine_condition`.
    _cp_plan = {
        "": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
            "img_ids": ContextParallelInput(split_dim=0, expected_dims=2, split_output=False),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
            "encoder_attention_mask": ContextParallelInput(split_dim=1, expected_dims=2, split_output=False),
            "context_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
            "context_ids": ContextParallelInput(split_dim=0, expected_dims=2, split_output=False),
            "context_attention_mask": ContextParallelInput(split_dim=1, expected_dims=2, split_output=False),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        # `auto_map` is read by `AutoModel`, not by the constructor: diffusers would warn that it is unexpected.
        config_dict = {key: value for key, value in config_dict.items() if key != "auto_map"}
        return super().extract_init_dict(config_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """As [`~ModelMixin.from_pretrained`], from safetensors only, and with missing weights an error."""
        pretrained_model_name_or_path = check_pretrained_path(pretrained_model_name_or_path)
        if kwargs.get("use_safetensors") is None:
            kwargs["use_safetensors"] = True
        with_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        raise_on_missing_weights(pretrained_model_name_or_path, cls.__name__, info["missing_keys"])
        return (model, info) if with_info else model

    @register_to_config
    def __init__(
        self,
        in_channels: int = 16,
        out_channels: int | None = 16,
        num_layers: int = 6,
        num_single_layers: int = 12,
        attention_head_dim: int = 128,
        num_attention_heads: int = 12,
        joint_attention_dim: int = 4096,
        mlp_ratio: float = 4.0,
        axes_dims_rope: tuple[int, ...] = (16, 56, 56),
        theta: int = 10000,
        qkv_bias: bool = True,
        refiner_num_layers: int = 2,
        refiner_num_attention_heads: int = 24,
        refiner_mlp_ratio: float = 4.0,
        guidance_embeds: bool = False,
    ):
        super().__init__()
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(
                f"`axes_dims_rope` {axes_dims_rope} must sum to `attention_head_dim` {attention_head_dim}."
            )
        self.out_channels = out_channels or in_channels
        self.inner_dim = num_attention_heads * attention_head_dim

        self.pos_embed = OvisU1PosEmbed(theta=theta, axes_dim=list(axes_dims_rope))
        embedding_cls = (
            CombinedTimestepGuidanceTextProjEmbeddings if guidance_embeds else CombinedTimestepTextProjEmbeddings
        )
        self.time_text_embed = embedding_cls(embedding_dim=self.inner_dim, pooled_projection_dim=self.inner_dim)
        self.refiner = OvisU1TokenRefiner(
            joint_attention_dim, self.inner_dim, refiner_num_attention_heads, refiner_num_layers, refiner_mlp_ratio
        )
        self.x_embedder = nn.Linear(in_channels, self.inner_dim)

        self.transformer_blocks = nn.ModuleList(
            [
                OvisU1TransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim, mlp_ratio, qkv_bias)
                for _ in range(num_layers)
            ]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [
                OvisU1SingleTransformerBlock(self.inner_dim, num_attention_heads, attention_head_dim, mlp_ratio)
                for _ in range(num_single_layers)
            ]
        )

        self.norm_out = AdaLayerNormContinuous(self.inner_dim, self.inner_dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(self.inner_dim, self.out_channels)

        self.gradient_checkpointing = False

    def refine_condition(
        self, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Runs the token refiner, which does not depend on the timestep: call it once and pass its outputs to every
        denoising step as `forward(encoder_hidden_states=tokens, pooled_projections=pooled)`.

        Args:
            encoder_hidden_states (`torch.Tensor` of shape `(batch_size, text_sequence_length, joint_attention_dim)`):
                The generation condition from the language model.
            encoder_attention_mask (`torch.Tensor` of shape `(batch_size, text_sequence_length)`, *optional*):
                1 for valid condition tokens, 0 for padding (left or right). Padded samples then refine exactly as
                they would alone.

        Returns:
            `tuple(torch.Tensor, torch.Tensor)`: refined tokens `(batch_size, text_sequence_length, inner_dim)` and the
            pooled condition `(batch_size, inner_dim)`.
        """
        return self.refiner(encoder_hidden_states, encoder_attention_mask)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        img_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        context_hidden_states: torch.Tensor | None = None,
        context_ids: torch.Tensor | None = None,
        context_attention_mask: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> torch.Tensor | Transformer2DModelOutput:
        """
        Predicts the flow velocity of the noisy packed latents.

        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, image_sequence_length, in_channels)`):
                Noisy packed latents.
            timestep (`torch.Tensor` of shape `(batch_size,)`):
                Flow-matching time in [0, 1] (1 is pure noise).
            img_ids (`torch.Tensor` of shape `(image_sequence_length, 3)` or `(batch_size, image_sequence_length, 3)`):
                Positions `(0, row, col)` of the latent tokens.
            encoder_hidden_states (`torch.Tensor`):
                The condition `(batch_size, text_sequence_length, joint_attention_dim)`, or, together with
                `pooled_projections`, the refined tokens `(batch_size, text_sequence_length, inner_dim)` returned by
                [`~OvisU1Transformer2DModel.refine_condition`].
            encoder_attention_mask (`torch.Tensor` of shape `(batch_size, text_sequence_length)`, *optional*):
                1 for valid condition tokens, 0 for padding.
            pooled_projections (`torch.Tensor` of shape `(batch_size, inner_dim)`, *optional*):
                The pooled condition from `refine_condition`; when given, the refiner is skipped.
            context_hidden_states (`torch.Tensor` of shape `(batch_size, context_sequence_length, in_channels)`):
                Packed latents of the image to edit (optional), attended together with the noisy latents; their
                outputs are dropped.
            context_ids (`torch.Tensor` of shape `(context_sequence_length, 3)` or `(batch_size, ..., 3)`):
                Positions `(1, row, col)` of the context tokens; required with `context_hidden_states`.
            context_attention_mask (`torch.Tensor` of shape `(batch_size, context_sequence_length)`, *optional*):
                1 for valid context tokens, 0 for padding; a sample whose context is all 0 is computed as without
                context.
            guidance (`torch.Tensor` of shape `(batch_size,)`, *optional*):
                Guidance scale to embed; required when the model has `guidance_embeds`.
            return_dict (`bool`, defaults to `True`):
                Whether to return a [`~models.modeling_outputs.Transformer2DModelOutput`] instead of a plain tuple.

        Returns:
            [`~models.modeling_outputs.Transformer2DModelOutput`] or `tuple` whose first element is the predicted
            velocity `(batch_size, image_sequence_length, out_channels)`.
        """
        if pooled_projections is None:
            if self._parallel_config is not None and self._parallel_config.context_parallel_config is not None:
                # The condition arrives here already split, and the refiner's pooling needs all of it.
                raise ValueError(
                    "Under context parallelism, refine the condition first: pass the outputs of `refine_condition` "
                    "as `encoder_hidden_states` and `pooled_projections`."
                )
            encoder_hidden_states, pooled_projections = self.refiner(encoder_hidden_states, encoder_attention_mask)
        if self.config.guidance_embeds and guidance is None:
            raise ValueError("This model has `guidance_embeds`: pass `guidance`.")
        if context_hidden_states is not None and context_ids is None:
            raise ValueError("`context_ids` are required with `context_hidden_states`.")

        batch_size, image_seq_len = hidden_states.shape[:2]
        text_seq_len = encoder_hidden_states.shape[1]

        hidden_states = self.x_embedder(hidden_states)
        timestep = timestep.to(hidden_states.dtype) * 1000
        if self.config.guidance_embeds:
            temb = self.time_text_embed(timestep, guidance.to(hidden_states.dtype) * 1000, pooled_projections)
        else:
            temb = self.time_text_embed(timestep, pooled_projections)

        ids = [img_ids]
        if context_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, self.x_embedder(context_hidden_states)], dim=1)
            ids.append(context_ids)
        if any(i.ndim == 3 for i in ids):
            ids = [i.expand(batch_size, -1, -1) if i.ndim == 2 else i for i in ids]
        # Text positions are all zeros, so text padding never shifts any position.
        txt_ids = ids[0].new_zeros(*ids[0].shape[:-2], text_seq_len, ids[0].shape[-1])
        image_rotary_emb = self.pos_embed(torch.cat([txt_ids, *ids], dim=-2))

        if context_hidden_states is None:
            context_attention_mask = None
        lengths = [text_seq_len, image_seq_len, hidden_states.shape[1] - image_seq_len]
        device = hidden_states.device
        attention_mask = _key_padding_mask(
            encoder_attention_mask, None, context_attention_mask, lengths=lengths, batch_size=batch_size, device=device
        )
        image_attention_mask = _key_padding_mask(
            None, context_attention_mask, lengths=lengths[1:], batch_size=batch_size, device=device
        )

        for block in self.transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                encoder_hidden_states, hidden_states = self._gradient_checkpointing_func(
                    block,
                    hidden_states,
                    encoder_hidden_states,
                    temb,
                    image_rotary_emb,
                    attention_mask,
                    image_attention_mask,
                )
            else:
                encoder_hidden_states, hidden_states = block(
                    hidden_states, encoder_hidden_states, temb, image_rotary_emb, attention_mask, image_attention_mask
                )

        for block in self.single_transformer_blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                encoder_hidden_states, hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, temb, image_rotary_emb, attention_mask
                )
            else:
                encoder_hidden_states, hidden_states = block(
                    hidden_states, encoder_hidden_states, temb, image_rotary_emb, attention_mask
                )

        hidden_states = hidden_states[:, :image_seq_len]
        output = self.proj_out(self.norm_out(hidden_states, temb))

        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)


# As remote code, diffusers executes this file again, in place, each time it loads a class from it: a saved folder's
# pipeline file imports it, then the transformer component (and `AutoModel`) loads from it. A new class per run would
# fail diffusers' type checks against the class the pipeline was defined with ("Expected types for transformer" on
# load, and `from_pipe` not sharing the transformer), so the class of the first run is kept. The package's own module
# is imported once and left as is (`importlib.reload` still picks up edits).
if __name__.startswith("diffusers_modules."):
    OvisU1Transformer2DModel = globals().setdefault("_FIRST_TRANSFORMER_CLASS", OvisU1Transformer2DModel)

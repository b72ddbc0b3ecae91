# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""The one table from released Ovis-U1 tensor names to ours, and the re-layouts it needs.

Used in one direction only: every released tensor name must match exactly one rule, which names the component it
goes to, the name(s) it gets there and how its values are re-laid out. A rule with no component consumes the tensor
and drops it (with the reason in its note).
"""

import re
from dataclasses import dataclass

import torch

from .source import ConversionError, listing


TEXT_ENCODER, TRANSFORMER, VAE = "text_encoder", "transformer", "vae"

# Re-layouts. Each is one-to-many, so every released tensor is converted on its own (streaming).
COPY = "copy"
SPLIT_QKV = "split_qkv"  # fused (3 * d, ...) -> q, k, v in that order (split as (3, heads, head_dim))
SPLIT_LINEAR1 = "split_linear1"  # single block (3 * d + mlp, ...) -> q, k, v, mlp
SWAP_HALVES = "swap_halves"  # released (shift, scale) -> diffusers AdaLayerNormContinuous (scale, shift)
SQUEEZE_BATCH = "squeeze_batch"  # (1, P, C) parameter -> (P, C) embedding table
DROP = "drop"


@dataclass(frozen=True)
class Rule:
    pattern: str
    component: str | None
    targets: tuple[str, ...]
    relayout: str = COPY
    note: str = ""


_BB = r"visual_tokenizer\.backbone\."
_TOWER = "model.vision_tower."
_GEN = r"visual_generator\.backbone\."
_WB = r"(weight|bias)"

RULES: tuple[Rule, ...] = (
    # ---- language model (Qwen3): names unchanged under a new prefix
    Rule(r"llm\.model\.(.+)", TEXT_ENCODER, ("model.language_model.{0}",)),
    Rule(
        r"llm\.lm_head\.weight",
        TEXT_ENCODER,
        ("lm_head.weight",),
        note="dropped when the embeddings are tied: the loaded model shares embed_tokens, as the released one does",
    ),
    # ---- visual embedding table and visual tokenizer head
    Rule(r"vte\.weight", TEXT_ENCODER, ("model.visual_embeddings_table.weight",)),
    Rule(r"visual_tokenizer\.head\.0\.weight", TEXT_ENCODER, (_TOWER + "head_linear.weight",)),
    Rule(rf"visual_tokenizer\.head\.1\.{_WB}", TEXT_ENCODER, (_TOWER + "head_norm.{0}",)),
    # ---- AIMv2 vision encoder
    Rule(rf"{_BB}preprocessor\.patchifier\.proj\.{_WB}", TEXT_ENCODER, (_TOWER + "embeddings.patch_embedding.{0}",)),
    Rule(rf"{_BB}preprocessor\.patchifier\.norm\.weight", TEXT_ENCODER, (_TOWER + "embeddings.rms_norm.weight",)),
    Rule(
        rf"{_BB}preprocessor\.pos_embed",
        TEXT_ENCODER,
        (_TOWER + "embeddings.position_embedding.weight",),
        SQUEEZE_BATCH,
        note="(1, P, C) parameter -> (P, C) nn.Embedding weight",
    ),
    Rule(
        rf"{_BB}trunk\.blocks\.(\d+)\.attn\.(qkv|proj)\.{_WB}",
        TEXT_ENCODER,
        (_TOWER + "layers.{0}.attention.{1}.{2}",),
    ),
    Rule(rf"{_BB}trunk\.blocks\.(\d+)\.norm_1\.weight", TEXT_ENCODER, (_TOWER + "layers.{0}.rms_norm1.weight",)),
    Rule(rf"{_BB}trunk\.blocks\.(\d+)\.norm_2\.weight", TEXT_ENCODER, (_TOWER + "layers.{0}.rms_norm2.weight",)),
    Rule(rf"{_BB}trunk\.blocks\.(\d+)\.mlp\.fc1\.{_WB}", TEXT_ENCODER, (_TOWER + "layers.{0}.mlp.gate_proj.{1}",)),
    Rule(rf"{_BB}trunk\.blocks\.(\d+)\.mlp\.fc3\.{_WB}", TEXT_ENCODER, (_TOWER + "layers.{0}.mlp.up_proj.{1}",)),
    Rule(rf"{_BB}trunk\.blocks\.(\d+)\.mlp\.fc2\.{_WB}", TEXT_ENCODER, (_TOWER + "layers.{0}.mlp.down_proj.{1}",)),
    Rule(
        rf"{_BB}trunk\.post_trunk_norm\.weight",
        None,
        (),
        DROP,
        note="QUIRK: the released features skip this norm, so it never affects the output",
    ),
    # ---- VAE: diffusers AutoencoderKL names, unchanged
    Rule(r"visual_generator\.vae\.(.+)", VAE, ("{0}",)),
    # ---- decoder embeddings
    Rule(rf"{_GEN}img_in\.{_WB}", TRANSFORMER, ("x_embedder.{0}",)),
    Rule(rf"{_GEN}time_in\.in_layer\.{_WB}", TRANSFORMER, ("time_text_embed.timestep_embedder.linear_1.{0}",)),
    Rule(rf"{_GEN}time_in\.out_layer\.{_WB}", TRANSFORMER, ("time_text_embed.timestep_embedder.linear_2.{0}",)),
    Rule(rf"{_GEN}vector_in\.in_layer\.{_WB}", TRANSFORMER, ("time_text_embed.text_embedder.linear_1.{0}",)),
    Rule(rf"{_GEN}vector_in\.out_layer\.{_WB}", TRANSFORMER, ("time_text_embed.text_embedder.linear_2.{0}",)),
    Rule(rf"{_GEN}guidance_in\.in_layer\.{_WB}", TRANSFORMER, ("time_text_embed.guidance_embedder.linear_1.{0}",)),
    Rule(rf"{_GEN}guidance_in\.out_layer\.{_WB}", TRANSFORMER, ("time_text_embed.guidance_embedder.linear_2.{0}",)),
    # ---- token refiner `txt_in`
    Rule(rf"{_GEN}txt_in\.input_embedder\.{_WB}", TRANSFORMER, ("refiner.proj_in.{0}",)),
    Rule(rf"{_GEN}txt_in\.c_embedder\.linear_([12])\.{_WB}", TRANSFORMER, ("refiner.pooled_embedder.linear_{0}.{1}",)),
    Rule(rf"{_GEN}txt_in\.cls_token", TRANSFORMER, ("refiner.cls_token",)),
    Rule(
        rf"{_GEN}txt_in\.individual_token_refiner\.blocks\.(\d+)\.(norm1|norm2)\.{_WB}",
        TRANSFORMER,
        ("refiner.blocks.{0}.{1}.{2}",),
    ),
    Rule(
        rf"{_GEN}txt_in\.individual_token_refiner\.blocks\.(\d+)\.self_attn_qkv\.{_WB}",
        TRANSFORMER,
        ("refiner.blocks.{0}.attn.to_q.{1}", "refiner.blocks.{0}.attn.to_k.{1}", "refiner.blocks.{0}.attn.to_v.{1}"),
        SPLIT_QKV,
    ),
    Rule(
        rf"{_GEN}txt_in\.individual_token_refiner\.blocks\.(\d+)\.self_attn_proj\.{_WB}",
        TRANSFORMER,
        ("refiner.blocks.{0}.attn.to_out.0.{1}",),
    ),
    Rule(
        rf"{_GEN}txt_in\.individual_token_refiner\.blocks\.(\d+)\.mlp\.fc1\.{_WB}",
        TRANSFORMER,
        ("refiner.blocks.{0}.ff.net.0.proj.{1}",),
    ),
    Rule(
        rf"{_GEN}txt_in\.individual_token_refiner\.blocks\.(\d+)\.mlp\.fc2\.{_WB}",
        TRANSFORMER,
        ("refiner.blocks.{0}.ff.net.2.{1}",),
    ),
    Rule(
        rf"{_GEN}txt_in\.individual_token_refiner\.blocks\.(\d+)\.adaLN_modulation\.1\.{_WB}",
        TRANSFORMER,
        ("refiner.blocks.{0}.gates.linear.{1}",),
    ),
    # ---- MMDiT-X double blocks; the 9 img_mod chunks keep their (shift, scale, gate) x 3 order
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.img_mod\.lin\.{_WB}", TRANSFORMER, ("transformer_blocks.{0}.norm1.linear.{1}",)
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.txt_mod\.lin\.{_WB}",
        TRANSFORMER,
        ("transformer_blocks.{0}.norm1_context.linear.{1}",),
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.img_attn\.qkv\.{_WB}",
        TRANSFORMER,
        (
            "transformer_blocks.{0}.attn.to_q.{1}",
            "transformer_blocks.{0}.attn.to_k.{1}",
            "transformer_blocks.{0}.attn.to_v.{1}",
        ),
        SPLIT_QKV,
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.img_attn\.proj\.{_WB}",
        TRANSFORMER,
        ("transformer_blocks.{0}.attn.to_out.0.{1}",),
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.img_attn\.norm\.query_norm\.scale",
        TRANSFORMER,
        ("transformer_blocks.{0}.attn.norm_q.weight",),
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.img_attn\.norm\.key_norm\.scale",
        TRANSFORMER,
        ("transformer_blocks.{0}.attn.norm_k.weight",),
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.img_self_attn\.qkv\.{_WB}",
        TRANSFORMER,
        (
            "transformer_blocks.{0}.attn2.to_q.{1}",
            "transformer_blocks.{0}.attn2.to_k.{1}",
            "transformer_blocks.{0}.attn2.to_v.{1}",
        ),
        SPLIT_QKV,
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.img_self_attn\.proj\.{_WB}",
        TRANSFORMER,
        ("transformer_blocks.{0}.attn2.to_out.0.{1}",),
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.img_self_attn\.norm\.query_norm\.scale",
        TRANSFORMER,
        ("transformer_blocks.{0}.attn2.norm_q.weight",),
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.img_self_attn\.norm\.key_norm\.scale",
        TRANSFORMER,
        ("transformer_blocks.{0}.attn2.norm_k.weight",),
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.txt_attn\.qkv\.{_WB}",
        TRANSFORMER,
        (
            "transformer_blocks.{0}.attn.add_q_proj.{1}",
            "transformer_blocks.{0}.attn.add_k_proj.{1}",
            "transformer_blocks.{0}.attn.add_v_proj.{1}",
        ),
        SPLIT_QKV,
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.txt_attn\.proj\.{_WB}",
        TRANSFORMER,
        ("transformer_blocks.{0}.attn.to_add_out.{1}",),
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.txt_attn\.norm\.query_norm\.scale",
        TRANSFORMER,
        ("transformer_blocks.{0}.attn.norm_added_q.weight",),
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.txt_attn\.norm\.key_norm\.scale",
        TRANSFORMER,
        ("transformer_blocks.{0}.attn.norm_added_k.weight",),
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.img_mlp\.0\.{_WB}", TRANSFORMER, ("transformer_blocks.{0}.ff.net.0.proj.{1}",)
    ),
    Rule(rf"{_GEN}double_blocks\.(\d+)\.img_mlp\.2\.{_WB}", TRANSFORMER, ("transformer_blocks.{0}.ff.net.2.{1}",)),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.txt_mlp\.0\.{_WB}",
        TRANSFORMER,
        ("transformer_blocks.{0}.ff_context.net.0.proj.{1}",),
    ),
    Rule(
        rf"{_GEN}double_blocks\.(\d+)\.txt_mlp\.2\.{_WB}",
        TRANSFORMER,
        ("transformer_blocks.{0}.ff_context.net.2.{1}",),
    ),
    # ---- single blocks
    Rule(
        rf"{_GEN}single_blocks\.(\d+)\.linear1\.{_WB}",
        TRANSFORMER,
        (
            "single_transformer_blocks.{0}.attn.to_q.{1}",
            "single_transformer_blocks.{0}.attn.to_k.{1}",
            "single_transformer_blocks.{0}.attn.to_v.{1}",
            "single_transformer_blocks.{0}.proj_mlp.{1}",
        ),
        SPLIT_LINEAR1,
        note="rows [d | d | d | mlp] -> q, k, v, mlp input",
    ),
    Rule(rf"{_GEN}single_blocks\.(\d+)\.linear2\.{_WB}", TRANSFORMER, ("single_transformer_blocks.{0}.proj_out.{1}",)),
    Rule(
        rf"{_GEN}single_blocks\.(\d+)\.modulation\.lin\.{_WB}",
        TRANSFORMER,
        ("single_transformer_blocks.{0}.norm.linear.{1}",),
    ),
    Rule(
        rf"{_GEN}single_blocks\.(\d+)\.norm\.query_norm\.scale",
        TRANSFORMER,
        ("single_transformer_blocks.{0}.attn.norm_q.weight",),
    ),
    Rule(
        rf"{_GEN}single_blocks\.(\d+)\.norm\.key_norm\.scale",
        TRANSFORMER,
        ("single_transformer_blocks.{0}.attn.norm_k.weight",),
    ),
    # ---- final layer
    Rule(rf"{_GEN}final_layer\.linear\.{_WB}", TRANSFORMER, ("proj_out.{0}",)),
    Rule(
        rf"{_GEN}final_layer\.adaLN_modulation\.1\.{_WB}",
        TRANSFORMER,
        ("norm_out.linear.{0}",),
        SWAP_HALVES,
        note="released (shift, scale) rows -> AdaLayerNormContinuous (scale, shift)",
    ),
)

_COMPILED = tuple((re.compile(rule.pattern), rule) for rule in RULES)


@dataclass(frozen=True)
class Mapping:
    """Where one released tensor goes: `component` (None: dropped) and the names it gets there."""

    source: str
    rule: Rule
    targets: tuple[str, ...]

    @property
    def component(self) -> str | None:
        return self.rule.component


def map_key(name: str) -> Mapping | None:
    """The mapping of a released tensor name, or None when no rule matches (an unexpected tensor)."""
    matches = [(match, rule) for pattern, rule in _COMPILED if (match := pattern.fullmatch(name))]
    if not matches:
        return None
    if len(matches) > 1:  # a bug in the table, never in the checkpoint
        raise RuntimeError(f"{name} matches several key-map rules: {[rule.pattern for _, rule in matches]}")
    match, rule = matches[0]
    return Mapping(name, rule, tuple(target.format(*match.groups()) for target in rule.targets))


def _split_sizes(mapping: Mapping, rows: int, hidden_size: int) -> list[int] | None:
    if mapping.rule.relayout == SPLIT_QKV:
        return [rows // 3] * 3 if rows % 3 == 0 else None
    # SPLIT_LINEAR1: three d-row blocks, then the MLP input rows.
    return [hidden_size] * 3 + [rows - 3 * hidden_size] if rows > 3 * hidden_size else None


def relayout_shapes(mapping: Mapping, shape: tuple[int, ...], hidden_size: int) -> list[tuple[int, ...]] | None:
    """The shapes of `mapping.targets` for a released tensor of `shape`, or None when the shape cannot be split."""
    relayout = mapping.rule.relayout
    if relayout == DROP:
        return []
    if relayout in (SPLIT_QKV, SPLIT_LINEAR1):
        if not shape:
            return None
        sizes = _split_sizes(mapping, shape[0], hidden_size)
        return None if sizes is None else [(size, *shape[1:]) for size in sizes]
    if relayout == SWAP_HALVES:
        return [shape] if shape and shape[0] % 2 == 0 else None
    if relayout == SQUEEZE_BATCH:
        return [shape[1:]] if len(shape) == 3 and shape[0] == 1 else None
    return [shape]


def relayout(mapping: Mapping, tensor: torch.Tensor, hidden_size: int) -> list[torch.Tensor]:
    """The tensors of `mapping.targets` made from the released `tensor` (contiguous copies of the views)."""
    kind = mapping.rule.relayout
    if kind == DROP:
        return []
    if kind in (SPLIT_QKV, SPLIT_LINEAR1):
        return [part.contiguous() for part in tensor.split(_split_sizes(mapping, tensor.shape[0], hidden_size))]
    if kind == SWAP_HALVES:
        first, second = tensor.chunk(2, dim=0)
        return [torch.cat([second, first])]
    if kind == SQUEEZE_BATCH:
        return [tensor[0].contiguous()]
    return [tensor]


@dataclass
class Plan:
    """Every released tensor, grouped by the component it goes to, and the ones dropped (with the reason)."""

    by_component: dict[str, list[Mapping]]
    dropped: list[tuple[str, str]]


def plan_conversion(
    tensors: dict, expected: dict[str, dict[str, tuple[int, ...]]], hidden_size: int, tied: bool
) -> Plan:
    """
    Maps every released tensor and checks the result against the tensors our components expect.

    Args:
        tensors: released name -> an object with a `shape` (the checkpoint's tensor listing).
        expected: component -> our name -> shape.
        hidden_size: decoder width (to split the single blocks' fused projection).
        tied: whether the language-model head shares the input embeddings (then `llm.lm_head.weight` is dropped).

    Raises:
        ConversionError listing every unexpected, missing and mis-shaped tensor at once.
    """
    by_component = {component: [] for component in expected}
    dropped, unexpected, misshaped, produced = [], [], [], {}
    for name in sorted(tensors):
        mapping = map_key(name)
        if mapping is None:
            unexpected.append(name)
            continue
        if mapping.component is None:
            dropped.append((name, mapping.rule.note))
            continue
        if mapping.component not in expected:
            dropped.append((name, f"the {mapping.component} is not part of the output format"))
            continue
        if tied and mapping.targets == ("lm_head.weight",):
            dropped.append((name, mapping.rule.note))
            continue
        shape = tuple(tensors[name].shape)
        shapes = relayout_shapes(mapping, shape, hidden_size)
        wanted = expected[mapping.component]
        if shapes is None:
            misshaped.append(f"{name} {shape}: cannot be re-laid out ({mapping.rule.relayout})")
            continue
        for target, target_shape in zip(mapping.targets, shapes, strict=True):
            key = (mapping.component, target)
            if key in produced:
                raise ConversionError(f"{name} and {produced[key]} both map to {mapping.component}/{target}.")
            produced[key] = name
            if target not in wanted:
                unexpected.append(f"{name} (-> {mapping.component}/{target})")
            elif tuple(wanted[target]) != tuple(target_shape):
                misshaped.append(
                    f"{name} {shape} -> {mapping.component}/{target} {tuple(target_shape)}, expected "
                    f"{tuple(wanted[target])}"
                )
        by_component[mapping.component].append(mapping)
    missing = [
        f"{component}/{target}"
        for component, wanted in expected.items()
        for target in wanted
        if (component, target) not in produced
    ]
    problems = []
    if missing:
        problems.append(
            f"missing tensors (expected by the converted model, made from no released tensor):{listing(missing)}"
        )
    if unexpected:
        problems.append(f"unexpected tensors (the converted model has no place for them):{listing(unexpected)}")
    if misshaped:
        problems.append(f"tensors with the wrong shape:{listing(misshaped)}")
    if problems:
        raise ConversionError("The checkpoint does not match its config.json:\n" + "\n".join(problems))
    return Plan(by_component, dropped)


__all__ = [
    "RULES",
    "Rule",
    "Mapping",
    "Plan",
    "map_key",
    "plan_conversion",
    "relayout",
    "relayout_shapes",
    "TEXT_ENCODER",
    "TRANSFORMER",
    "VAE",
]

# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
Small random checkpoints in the layout of the released `AIDC-AI/Ovis-U1-3B`: its `config.json` (with the fields
transformers 4.x wrote), its tensor names and shapes, safetensors shards with their index, tokenizer files and
`preprocessor_config.json`. Written without any download, they feed the converter exactly as the released checkpoint
does: `ovis-u1 demo` builds one, and the conversion tests check the converter on them.

`build_released(folder)` writes one at the default (tiny) sizes, random weights; `released_config(...)` varies the
architecture switches the released config has.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from .source import RANDOM_WEIGHTS_MARKER


SPECIAL_TOKENS = ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
THINK_TOKENS = ["<think>", "</think>"]

# Chat-shaped text, so that BPE learns merges such as ">\n" that cross an `<image>` marker's border.
_CORPUS = [
    "<image>\nDescribe the image by detailing the color, shape, size, texture, quantity, text, and spatial "
    "relationships of the objects:",
    "<image>\nGenerate an image.",
    "Image 1: <image>\nImage 2: <image>\nWhat is the difference between the two images?",
    "<image>\nWhat is in the picture? A red cat sits on a blue mat.",
    "user\nassistant\nsystem\nYou are a helpful assistant.",
    "Make the sky purple and add a small yellow moon above the old house.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>-_=+*/\\|@#$%^&~`",
]


def tiny_tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE tokenizer with Qwen's special tokens and pre-tokenization, trained in memory: a small stand-in
    for the released (Qwen3) tokenizer, built offline.

    Training on the fixed corpus is deterministic, so the ids are the same in every process. Regular tokens take ids
    0-399, then `<|im_end|>` (eos), `<|endoftext|>` (pad), the other special tokens and `<think>`, `</think>`.
    """
    bpe = Tokenizer(BPE())
    bpe.normalizer = normalizers.NFC()
    # The released (Qwen3) tokenizer's pre-tokenization: the split regex, then bytes as printable characters.
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    merges = [tuple(merge) for merge in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe.get_vocab(), merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.add_tokens(THINK_TOKENS)
    return tokenizer


# Sizes (the released ones in comments).
LLM_WIDTH = 32  # 2048
LLM_VOCAB = 416  # 151936: the embedding table is larger than the tokenizer
VISION_WIDTH = 32  # 1024
VISUAL_VOCAB = 40  # 32768
DECODER_WIDTH, DECODER_HEADS = 32, 2  # 1536, 12
CONTEXT_WIDTH = 2 * LLM_WIDTH  # 4096
PATCH, STRIDE = 14, 2
IMAGE_MEAN, IMAGE_STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]

# What transformers 4.x wrote into every serialized (sub-)config.
GENERIC_4X = {
    "return_dict": True,
    "output_hidden_states": False,
    "output_attentions": False,
    "torchscript": False,
    "use_bfloat16": False,
    "tf_legacy_loss": False,
    "pruned_heads": {},
    "chunk_size_feed_forward": 0,
    "is_encoder_decoder": False,
    "is_decoder": False,
    "add_cross_attention": False,
    "max_length": 20,
    "min_length": 0,
    "do_sample": False,
    "num_beams": 1,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "problem_type": None,
    "_name_or_path": "",
}

VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.32.2",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 8, 8],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 32,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}

QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass
class Released:
    """A written checkpoint: its folder, its `config.json` and its tensors (as written)."""

    folder: Path
    config: dict
    tensors: dict[str, torch.Tensor]


def released_config(
    *,
    tied=True,
    pos_embed=True,
    interpolate_pe_method="two_dim",
    vision_qkv_bias=False,
    vision_use_bias=False,
    full_attention_blocks=(1,),
    generator_qkv_bias=True,
    guidance_embed=False,
    timestep_shift=True,
    llm_layers=2,
    vision_layers=3,
    decoder_depth=1,
    decoder_single_depth=1,
    released_widths=False,
) -> dict:
    """The released `config.json` at the tiny sizes above; the keyword arguments set the switches it has (tied
    embeddings, vision position embedding and biases, full-attention blocks, decoder biases, guidance embedding,
    timestep shift), the depths of the language model, the vision encoder and the decoder (double and single blocks),
    and with `released_widths` every width, vocabulary and VAE size of the released model (depths stay as given)."""
    llm_config = {
        **GENERIC_4X,
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 401,
        "eos_token_id": 400,
        "head_dim": 8,
        "hidden_act": "silu",
        "hidden_size": LLM_WIDTH,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 4096,
        "max_window_layers": 28,
        "model_type": "qwen3",
        "num_attention_heads": 4,
        "num_hidden_layers": llm_layers,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": LLM_VOCAB,
    }
    full = list(full_attention_blocks) if full_attention_blocks is not None else None
    backbone = {
        **GENERIC_4X,
        "model_type": "aimv2",
        "hidden_size": VISION_WIDTH,
        "intermediate_size": 48,
        "num_hidden_layers": vision_layers,
        "num_attention_heads": 2,
        "num_channels": 3,
        "image_size": 56,  # a 4x4 learned position grid
        "patch_size": PATCH,
        "rms_norm_eps": 1e-5,
        "qkv_bias": vision_qkv_bias,
        "use_bias": vision_use_bias,
        "hidden_stride": STRIDE,
        "window_size": 56,  # windows of 2x2 merged tokens
        "fullatt_block_indexes": full,
        "temporal_patch_size": 1,
        "preserve_original_pe": pos_embed,
        "interpolate_pe_method": interpolate_pe_method,
        "disable_rope": False,
        "min_pixels": 3136,
        "max_pixels": 12544,
        "attention_dropout": 0.0,
        "projection_dropout": 0.0,
    }
    visual_tokenizer = {
        **GENERIC_4X,
        "model_type": "aimv2_visual_tokenizer",
        "vocab_size": VISUAL_VOCAB,
        "tokenize_function": "softmax",
        "tau": 1.0,
        "depths": None,
        "use_indicators": False,
        "drop_cls_token": False,
        "hidden_stride": STRIDE,
        # The visual tokenizer's copies are NOT what the released model uses (it builds the backbone from
        # backbone_config): these differ from backbone_config on purpose, so a conversion that read them would
        # compute differently.
        "min_pixels": 200704,
        "max_pixels": 3211264,
        "temporal_patch_size": 1,
        "patch_size": PATCH,
        "window_size": 112,
        "fullatt_block_indexes": "0|2",
        "preserve_original_pe": True,
        "interpolate_pe_method": "one_dim",
        "disable_rope": True,
        "backbone_config": backbone,
    }
    generator = {
        "model_type": "yak",
        "in_channels": 16,
        "out_channels": 16,
        "vec_in_dim": DECODER_WIDTH,
        "context_in_dim": CONTEXT_WIDTH,
        "hidden_size": DECODER_WIDTH,
        "mlp_ratio": 4.0,
        "num_heads": DECODER_HEADS,
        "depth": decoder_depth,
        "depth_single_blocks": decoder_single_depth,
        "axes_dim": [4, 6, 6],
        "theta": 10000,
        "qkv_bias": generator_qkv_bias,
        "guidance_embed": guidance_embed,
        "txt_type": "refiner",
        "timestep_shift": timestep_shift,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "vae_config": dict(VAE_CONFIG),
    }
    config = {
        "architectures": ["OvisU1"],
        "auto_map": {
            "AutoConfig": "configuration_ovis_u1.OvisU1Config",
            "AutoModelForCausalLM": "modeling_ovis_u1.OvisU1",
        },
        "conversation_formatter_class": "Qwen3ConversationFormatter",
        "disable_tie_weight": False,
        "hidden_size": LLM_WIDTH,
        "llm_attn_implementation": "flash_attention_2",
        "llm_config": llm_config,
        "model_type": "ovis_u1",
        "multimodal_max_length": 2048,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.3",
        "visual_generator_config": generator,
        "visual_tokenizer_config": visual_tokenizer,
    }
    if released_widths:
        _use_released_widths(config)
    return config


def _use_released_widths(config: dict) -> None:
    """The released model's widths, vocabularies and VAE (the released `AIDC-AI/Ovis-U1-3B` sizes)."""
    config["hidden_size"] = 2048
    config["llm_config"].update(
        hidden_size=2048, intermediate_size=6144, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        vocab_size=151936,
    )  # fmt: skip
    config["visual_tokenizer_config"]["vocab_size"] = 32768
    backbone = config["visual_tokenizer_config"]["backbone_config"]
    backbone.update(hidden_size=1024, intermediate_size=2816, num_attention_heads=8, image_size=448, window_size=112)
    generator = config["visual_generator_config"]
    generator.update(hidden_size=1536, num_heads=12, axes_dim=[16, 56, 56], context_in_dim=4096, vec_in_dim=1536)
    generator["vae_config"].update(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32)


def released_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every released tensor name and its shape, for a config from `released_config`."""
    shapes = {}
    llm = config["llm_config"]
    w, hd = llm["hidden_size"], llm["head_dim"]
    q, kv, ff = llm["num_attention_heads"] * hd, llm["num_key_value_heads"] * hd, llm["intermediate_size"]
    shapes["llm.model.embed_tokens.weight"] = (llm["vocab_size"], w)
    for i in range(llm["num_hidden_layers"]):
        p = f"llm.model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (q, w),
                p + "self_attn.k_proj.weight": (kv, w),
                p + "self_attn.v_proj.weight": (kv, w),
                p + "self_attn.o_proj.weight": (w, q),
                p + "self_attn.q_norm.weight": (hd,),
                p + "self_attn.k_norm.weight": (hd,),
                p + "mlp.gate_proj.weight": (ff, w),
                p + "mlp.up_proj.weight": (ff, w),
                p + "mlp.down_proj.weight": (w, ff),
                p + "input_layernorm.weight": (w,),
                p + "post_attention_layernorm.weight": (w,),
            }
        )
    shapes["llm.model.norm.weight"] = (w,)
    if not llm["tie_word_embeddings"]:
        shapes["llm.lm_head.weight"] = (llm["vocab_size"], w)

    vt = config["visual_tokenizer_config"]
    bb = vt["backbone_config"]
    c, f, p = bb["hidden_size"], bb["intermediate_size"], "visual_tokenizer.backbone."
    shapes[p + "preprocessor.patchifier.proj.weight"] = (c, 3, bb["patch_size"], bb["patch_size"])
    shapes[p + "preprocessor.patchifier.proj.bias"] = (c,)
    shapes[p + "preprocessor.patchifier.norm.weight"] = (c,)
    if bb["preserve_original_pe"]:
        shapes[p + "preprocessor.pos_embed"] = (1, (bb["image_size"] // bb["patch_size"]) ** 2, c)
    for i in range(bb["num_hidden_layers"]):
        b = f"{p}trunk.blocks.{i}."
        shapes.update({b + "attn.qkv.weight": (3 * c, c), b + "attn.proj.weight": (c, c)})
        shapes.update({b + "norm_1.weight": (c,), b + "norm_2.weight": (c,)})
        shapes.update({b + "mlp.fc1.weight": (f, c), b + "mlp.fc3.weight": (f, c), b + "mlp.fc2.weight": (c, f)})
        if bb["qkv_bias"]:
            shapes[b + "attn.qkv.bias"] = (3 * c,)
        if bb["use_bias"]:
            shapes.update({b + "attn.proj.bias": (c,), b + "mlp.fc1.bias": (f,), b + "mlp.fc3.bias": (f,)})
            shapes[b + "mlp.fc2.bias"] = (c,)
    shapes[p + "trunk.post_trunk_norm.weight"] = (c,)
    heads_out = vt["vocab_size"] - 4
    shapes["visual_tokenizer.head.0.weight"] = (heads_out, c * bb["hidden_stride"] ** 2)
    shapes["visual_tokenizer.head.1.weight"] = (heads_out,)
    shapes["visual_tokenizer.head.1.bias"] = (heads_out,)
    shapes["vte.weight"] = (vt["vocab_size"], w)

    g = config["visual_generator_config"]
    d, ctx, mlp, hd = (
        g["hidden_size"],
        g["context_in_dim"],
        int(g["hidden_size"] * g["mlp_ratio"]),
        g["hidden_size"] // g["num_heads"],
    )
    p = "visual_generator.backbone."

    def linear(name, out, inp, bias=True):
        shapes[p + name + ".weight"] = (out, inp)
        if bias:
            shapes[p + name + ".bias"] = (out,)

    linear("img_in", d, g["in_channels"])
    linear("time_in.in_layer", d, 256)
    linear("time_in.out_layer", d, d)
    linear("vector_in.in_layer", d, g["vec_in_dim"])
    linear("vector_in.out_layer", d, d)
    if g["guidance_embed"]:
        linear("guidance_in.in_layer", d, 256)
        linear("guidance_in.out_layer", d, d)
    linear("txt_in.input_embedder", d, ctx)
    linear("txt_in.c_embedder.linear_1", d, ctx)
    linear("txt_in.c_embedder.linear_2", d, d)
    shapes[p + "txt_in.cls_token"] = (1, 1, d)
    for i in range(2):
        r = f"txt_in.individual_token_refiner.blocks.{i}."
        for norm in ("norm1", "norm2"):
            shapes[p + r + norm + ".weight"], shapes[p + r + norm + ".bias"] = (d,), (d,)
        linear(r + "self_attn_qkv", 3 * d, d)
        linear(r + "self_attn_proj", d, d)
        linear(r + "mlp.fc1", 4 * d, d)
        linear(r + "mlp.fc2", d, 4 * d)
        linear(r + "adaLN_modulation.1", 2 * d, d)
    for i in range(g["depth"]):
        b = f"double_blocks.{i}."
        linear(b + "img_mod.lin", 9 * d, d)
        linear(b + "txt_mod.lin", 6 * d, d)
        for attn in ("img_attn", "img_self_attn", "txt_attn"):
            linear(b + attn + ".qkv", 3 * d, d, bias=g["qkv_bias"])
            linear(b + attn + ".proj", d, d)
            shapes[p + b + attn + ".norm.query_norm.scale"] = (hd,)
            shapes[p + b + attn + ".norm.key_norm.scale"] = (hd,)
        for stream in ("img_mlp", "txt_mlp"):
            linear(b + stream + ".0", mlp, d)
            linear(b + stream + ".2", d, mlp)
    for i in range(g["depth_single_blocks"]):
        b = f"single_blocks.{i}."
        linear(b + "linear1", 3 * d + mlp, d)
        linear(b + "linear2", d, d + mlp)
        linear(b + "modulation.lin", 3 * d, d)
        shapes[p + b + "norm.query_norm.scale"] = (hd,)
        shapes[p + b + "norm.key_norm.scale"] = (hd,)
    linear("final_layer.linear", g["out_channels"], d)
    linear("final_layer.adaLN_modulation.1", 2 * d, d)
    return shapes


def random_tensors(config: dict, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random values for every released tensor of `config` (norm scales near 1, the rest small), seeded."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in released_shapes(config).items():
        if name.endswith(("norm.weight", "layernorm.weight", "norm_1.weight", "norm_2.weight", "scale")) or (
            name.endswith(("norm1.weight", "norm2.weight", "head.1.weight"))
        ):
            tensor = 1 + 0.2 * torch.randn(shape, generator=generator)
        else:
            tensor = 0.15 * torch.randn(shape, generator=generator)
        tensors[name] = tensor.to(dtype)
    vae = AutoencoderKL.from_config({k: v for k, v in config["visual_generator_config"]["vae_config"].items()})
    for name, tensor in vae.state_dict().items():
        tensors["visual_generator.vae." + name] = (tensor + 0.05 * torch.randn(tensor.shape, generator=generator)).to(
            dtype
        )
    return tensors


def write_released(
    folder, config: dict, tensors: dict[str, torch.Tensor], num_shards: int = 3, lm_head_copy: bool = False
) -> Released:
    """Writes the checkpoint: config.json, shards with model.safetensors.index.json (or one model.safetensors),
    the tokenizer files, preprocessor_config.json and a stand-in for the released remote code."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = dict(tensors)
    if lm_head_copy:  # some tied checkpoints store the head anyway
        tensors["llm.lm_head.weight"] = tensors["llm.model.embed_tokens.weight"].clone()
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    names = sorted(tensors)
    if num_shards == 1:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        weight_map = {}
        for index in range(num_shards):
            file = f"model-{index + 1:05d}-of-{num_shards:05d}.safetensors"
            part = names[index::num_shards]  # interleaved: components spread over every shard
            save_file({name: tensors[name] for name in part}, folder / file, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, file))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    model = json.loads((folder / "tokenizer.json").read_text())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"]))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in model["merges"]) + "\n")
    # The released (transformers 4.x) tokenizer_config.json, with Qwen3's chat template inline.
    tokenizer_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "additional_special_tokens": ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"],
        "bos_token": None,
        "chat_template": QWEN3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    backbone = config["visual_tokenizer_config"]["backbone_config"]
    preprocessor = {
        "crop_size": 448,
        "do_center_crop": False,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": IMAGE_MEAN,
        "image_processor_type": "CLIPImageProcessor",
        "image_std": IMAGE_STD,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 448},
        "min_pixels": 3136,
        "max_pixels": 12544,
        "patch_size": backbone["patch_size"],
        "hidden_stride": backbone["hidden_stride"],
        "temporal_patch_size": 1,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    (folder / "modeling_ovis_u1.py").write_text('raise RuntimeError("the released remote code must never run")\n')
    (folder / RANDOM_WEIGHTS_MARKER).write_text(
        "Random weights in the layout of the released AIDC-AI/Ovis-U1-3B, built by ovis_u1_hf: not a trained model.\n"
    )
    return Released(folder, config, tensors)


def build_released(
    folder, *, seed=0, dtype=torch.float32, num_shards=3, lm_head_copy=False, **config_kwargs
) -> Released:
    """Writes a random checkpoint in the released layout into `folder`; `config_kwargs` go to `released_config`."""
    config = released_config(**config_kwargs)
    return write_released(folder, config, random_tensors(config, seed, dtype), num_shards, lm_head_copy)

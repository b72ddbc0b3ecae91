"""Conversion of released-layout checkpoints: converted outputs against plain computations on the RELEASED tensors."""

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors import safe_open
from transformers import Qwen3Config, Qwen3Model

from ovis_u1_hf import OvisU1EditPipeline, OvisU1ForConditionalGeneration, OvisU1TextToImagePipeline
from ovis_u1_hf.cli import main as cli_main
from ovis_u1_hf.conversion import ConversionError, convert
from ovis_u1_hf.conversion.key_map import RULES, map_key
from pipeline_calls import run
from released import IMAGE_MEAN, build_released, random_tensors, released_config, released_shapes, write_released


TESTS = Path(__file__).parent
G = "visual_generator.backbone."

# ---------------------------------------------------------------- plain references on released names (SPEC 5-9) --


def lin(x, sd, name):
    bias = sd.get(name + ".bias")
    out = x @ sd[name + ".weight"].T
    return out if bias is None else out + bias


def silu(x):
    return x * torch.sigmoid(x)


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm(x, weight=None, bias=None, eps=1e-6):
    x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    return x if weight is None else x * weight + bias


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def softmax_attention(q, k, v, mask=None):
    """q, k, v: (..., S, H, D) -> (..., S, H * D)."""
    scores = torch.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("...hqk,...khd->...qhd", scores.softmax(-1), v).flatten(-2)


def ref_vision_features(sd, backbone, pixel_values, image_grid_thw):
    """SPEC 5 per image, on `visual_tokenizer.backbone.*`, structure read from backbone_config only."""
    p = "visual_tokenizer.backbone."
    C, heads, s, P = (backbone[k] for k in ("hidden_size", "num_attention_heads", "hidden_stride", "patch_size"))
    eps, head_dim = backbone["rms_norm_eps"], C // heads
    features, start = [], 0
    for t, gh, gw in image_grid_thw.tolist():
        n = t * gh * gw
        rows, start = pixel_values[start : start + n], start + n
        coords = torch.tensor(
            [
                (gr * s + dr, gc * s + dc)
                for gr in range(gh // s)
                for gc in range(gw // s)
                for dr in range(s)
                for dc in range(s)
            ]
        )
        x = F.conv2d(
            rows.view(n, 3, P, P),
            sd[p + "preprocessor.patchifier.proj.weight"],
            sd[p + "preprocessor.patchifier.proj.bias"],
        )
        x = rms_norm(x.view(n, C), sd[p + "preprocessor.patchifier.norm.weight"], eps)
        if backbone["preserve_original_pe"]:
            pe = sd[p + "preprocessor.pos_embed"][0]  # (1, P, C) in the checkpoint
            side = math.isqrt(pe.shape[0])
            if backbone["interpolate_pe_method"] == "two_dim":
                grid = F.interpolate(
                    pe.T.reshape(1, C, side, side), size=(gh, gw), mode="bicubic", align_corners=False
                )[0]
                x = x + torch.stack([grid[:, r, c] for r, c in coords.tolist()])
            else:
                line = F.interpolate(pe.T[None], size=gh * gw, mode="linear", align_corners=False)[0]
                x = x + torch.stack([line[:, r * gw + c] for r, c in coords.tolist()])
        freqs = 1.0 / (10000 ** (torch.arange(0, head_dim // 2, 2).float() / (head_dim // 2)))
        angles = torch.cat([coords[:, :1] * freqs, coords[:, 1:] * freqs], -1)
        cos, sin = torch.cat([angles, angles], -1).cos()[:, None], torch.cat([angles, angles], -1).sin()[:, None]
        window_side = backbone["window_size"] // s // P
        window = (coords[:, 0] // s // window_side) * 1000 + coords[:, 1] // s // window_side
        for i in range(backbone["num_hidden_layers"]):
            b = f"{p}trunk.blocks.{i}."
            full = backbone["fullatt_block_indexes"] is None or i in backbone["fullatt_block_indexes"]
            mask = torch.ones(n, n, dtype=torch.bool) if full else window[:, None] == window[None, :]
            q, k, v = (
                lin(rms_norm(x, sd[b + "norm_1.weight"], eps), sd, b + "attn.qkv")
                .view(n, 3, heads, head_dim)
                .unbind(1)
            )
            rotate = lambda y: torch.cat([-y[..., head_dim // 2 :], y[..., : head_dim // 2]], -1)  # noqa: E731
            q, k = q * cos + rotate(q) * sin, k * cos + rotate(k) * sin
            x = x + lin(softmax_attention(q, k, v, mask), sd, b + "attn.proj")
            h = rms_norm(x, sd[b + "norm_2.weight"], eps)
            x = x + lin(silu(lin(h, sd, b + "mlp.fc1")) * lin(h, sd, b + "mlp.fc3"), sd, b + "mlp.fc2")
        features.append(x)  # QUIRK: no post_trunk_norm
    return torch.cat(features)


def ref_understanding_logits(released, ids, pixel_values, image_grid_thw, start, end, pad):
    """SPEC 5-6 and the LLM as the stock Qwen3 on `llm.*`, for one unpadded sequence."""
    sd, config = {k: v.float() for k, v in released.tensors.items()}, released.config
    vt = config["visual_tokenizer_config"]
    V, s = vt["vocab_size"], vt["backbone_config"]["hidden_stride"]
    features = ref_vision_features(sd, vt["backbone_config"], pixel_values, image_grid_thw)
    merged = features.reshape(-1, features.shape[-1] * s * s)
    logits = layer_norm(
        merged @ sd["visual_tokenizer.head.0.weight"].T,
        sd["visual_tokenizer.head.1.weight"],
        sd["visual_tokenizer.head.1.bias"],
        1e-5,
    )
    tokens = torch.cat([logits.softmax(-1), torch.zeros(len(logits), 4)], -1)
    embeds = sd["llm.model.embed_tokens.weight"][ids].clone()
    embeds[ids == pad] = tokens @ sd["vte.weight"]
    embeds[ids == start] = sd["vte.weight"][V - 5]
    embeds[ids == end] = sd["vte.weight"][V - 4]
    llm_config = {k: v for k, v in config["llm_config"].items() if k not in ("torch_dtype",)}
    llm = Qwen3Model(Qwen3Config(**llm_config)).eval()
    llm.load_state_dict({k[len("llm.model.") :]: v for k, v in sd.items() if k.startswith("llm.model.")})
    hidden = llm(inputs_embeds=embeds[None]).last_hidden_state[0]
    tied = config["llm_config"]["tie_word_embeddings"] and not config["disable_tie_weight"]
    return hidden @ sd["llm.model.embed_tokens.weight" if tied else "llm.lm_head.weight"].T


def rope(x, ids, axes_dim, theta=10000):
    angles = torch.cat(
        [
            ids[..., i, None].double() * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
            for i, d in enumerate(axes_dim)
        ],
        -1,
    )
    cos, sin = angles.cos().float()[..., None, :], angles.sin().float()[..., None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2)


def timestep_sinusoid(t):
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = 1000 * t[:, None].float() * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


def ref_transformer(released, img, t, img_ids, condition, cond_img, cond_ids, guidance=None):
    """SPEC 8-9 on `visual_generator.backbone.*`."""
    sd = {k[len(G) :]: v.float() for k, v in released.tensors.items() if k.startswith(G)}
    g = released.config["visual_generator_config"]
    heads, axes = g["num_heads"], g["axes_dim"]
    d = g["hidden_size"]

    def split(qkv, n_heads):
        return qkv.unflatten(-1, (3, n_heads, -1)).unbind(-3)

    # refiner
    c = lin(silu(lin(condition.mean(1), sd, "txt_in.c_embedder.linear_1")), sd, "txt_in.c_embedder.linear_2")
    x = lin(condition, sd, "txt_in.input_embedder")
    x = torch.cat([sd["txt_in.cls_token"].expand(len(x), -1, -1), x], 1)
    for i in range(2):
        r = f"txt_in.individual_token_refiner.blocks.{i}."
        g_attn, g_mlp = lin(silu(c), sd, r + "adaLN_modulation.1").chunk(2, -1)
        q, k, v = split(
            lin(layer_norm(x, sd[r + "norm1.weight"], sd[r + "norm1.bias"]), sd, r + "self_attn_qkv"), 2 * heads
        )
        x = x + lin(softmax_attention(q, k, v), sd, r + "self_attn_proj") * g_attn[:, None]
        m = layer_norm(x, sd[r + "norm2.weight"], sd[r + "norm2.bias"])
        x = x + lin(silu(lin(m, sd, r + "mlp.fc1")), sd, r + "mlp.fc2") * g_mlp[:, None]
    txt, pooled = x[:, 1:], x[:, 0]

    n = img.shape[1]
    img, img_ids = torch.cat([img, cond_img], 1), torch.cat([img_ids, cond_ids])
    img = lin(img, sd, "img_in")
    vec = lin(silu(lin(timestep_sinusoid(t), sd, "time_in.in_layer")), sd, "time_in.out_layer")
    if guidance is not None:
        vec = vec + lin(
            silu(lin(timestep_sinusoid(guidance), sd, "guidance_in.in_layer")), sd, "guidance_in.out_layer"
        )
    vec = vec + lin(silu(lin(pooled, sd, "vector_in.in_layer")), sd, "vector_in.out_layer")
    ids = torch.cat([torch.zeros(txt.shape[1], 3), img_ids])

    def qkv(a, name):
        q, k, v = split(lin(a, sd, name + ".qkv"), heads)
        return (
            rms_norm(q, sd[name + ".norm.query_norm.scale"], 1e-6),
            rms_norm(k, sd[name + ".norm.key_norm.scale"], 1e-6),
            v,
        )

    for i in range(g["depth"]):
        b = f"double_blocks.{i}."
        s1, c1, g1, s2, c2, g2, s3, c3, g3 = lin(silu(vec), sd, b + "img_mod.lin")[:, None].chunk(9, -1)
        ts1, tc1, tg1, ts2, tc2, tg2 = lin(silu(vec), sd, b + "txt_mod.lin")[:, None].chunk(6, -1)
        a = layer_norm(img)
        iq, ik, iv = qkv((1 + c1) * a + s1, b + "img_attn")
        sq, sk, sv = qkv((1 + c3) * a + s3, b + "img_self_attn")
        tq, tk, tv = qkv((1 + tc1) * layer_norm(txt) + ts1, b + "txt_attn")
        self_out = softmax_attention(rope(sq, img_ids, axes), rope(sk, img_ids, axes), sv)
        joint = softmax_attention(
            rope(torch.cat([tq, iq], 1), ids, axes), rope(torch.cat([tk, ik], 1), ids, axes), torch.cat([tv, iv], 1)
        )
        joint_txt, joint_img = joint[:, : txt.shape[1]], joint[:, txt.shape[1] :]
        img = img + g1 * lin(joint_img, sd, b + "img_attn.proj")
        img = img + g3 * lin(self_out, sd, b + "img_self_attn.proj")
        img = img + g2 * lin(gelu_tanh(lin((1 + c2) * layer_norm(img) + s2, sd, b + "img_mlp.0")), sd, b + "img_mlp.2")
        txt = txt + tg1 * lin(joint_txt, sd, b + "txt_attn.proj")
        txt = txt + tg2 * lin(
            gelu_tanh(lin((1 + tc2) * layer_norm(txt) + ts2, sd, b + "txt_mlp.0")), sd, b + "txt_mlp.2"
        )
    x = torch.cat([txt, img], 1)
    for i in range(g["depth_single_blocks"]):
        b = f"single_blocks.{i}."
        s, c, gate = lin(silu(vec), sd, b + "modulation.lin")[:, None].chunk(3, -1)
        h = lin((1 + c) * layer_norm(x) + s, sd, b + "linear1")
        q, k, v = split(h[..., : 3 * d], heads)
        q, k = rms_norm(q, sd[b + "norm.query_norm.scale"], 1e-6), rms_norm(k, sd[b + "norm.key_norm.scale"], 1e-6)
        out = softmax_attention(rope(q, ids, axes), rope(k, ids, axes), v)
        x = x + gate * lin(torch.cat([out, gelu_tanh(h[..., 3 * d :])], -1), sd, b + "linear2")
    img = x[:, txt.shape[1] :]
    shift, scale = lin(silu(vec), sd, "final_layer.adaLN_modulation.1")[:, None].chunk(2, -1)  # shift first
    return lin((1 + scale) * layer_norm(img) + shift, sd, "final_layer.linear")[:, :n]


def ref_vae_decode(released, latents):
    vae = AutoencoderKL.from_config(released.config["visual_generator_config"]["vae_config"]).eval()
    prefix = "visual_generator.vae."
    vae.load_state_dict({k[len(prefix) :]: v.float() for k, v in released.tensors.items() if k.startswith(prefix)})
    return vae.decode(latents).sample


def grid_ids(h, w, index=0):
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([torch.full_like(rows, index), rows, cols], -1).reshape(-1, 3).float()


def assert_close(actual, expected, atol=2e-5, rtol=1e-4):
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


@torch.no_grad()
def check_parity(released, pipe):
    """The converted pipeline's three models against the references on the released tensors."""
    g = torch.Generator().manual_seed(1)
    processor = pipe.processor
    start, end, pad = processor.image_start_token_id, processor.image_end_token_id, processor.image_token_id
    image_grid_thw = torch.tensor([[1, 4, 6], [1, 6, 10]])  # merged 2x3 and 3x5: partial windows of 2x2
    pixel_values = torch.randn(84, 588, generator=g)
    ids = torch.tensor([5, 6, start] + [pad] * 6 + [end, 7, start] + [pad] * 15 + [end, 8, 9])
    logits = pipe.text_encoder(input_ids=ids[None], pixel_values=pixel_values, image_grid_thw=image_grid_thw).logits[0]
    assert_close(logits, ref_understanding_logits(released, ids, pixel_values, image_grid_thw, start, end, pad))

    guided = released.config["visual_generator_config"]["guidance_embed"]
    kwargs = dict(
        hidden_states=torch.randn(2, 6, 16, generator=g),
        timestep=torch.tensor([0.3, 0.8]),
        img_ids=grid_ids(2, 3),
        encoder_hidden_states=torch.randn(2, 5, 64, generator=g),
        context_hidden_states=torch.randn(2, 4, 16, generator=g),
        context_ids=grid_ids(2, 2, index=1),
        guidance=torch.tensor([3.0, 5.0]) if guided else None,
    )
    velocity = pipe.transformer(**kwargs).sample
    expected = ref_transformer(
        released,
        kwargs["hidden_states"],
        kwargs["timestep"],
        kwargs["img_ids"],
        kwargs["encoder_hidden_states"],
        kwargs["context_hidden_states"],
        kwargs["context_ids"],
        kwargs["guidance"],
    )
    assert_close(velocity, expected)

    latents = torch.randn(1, 4, 4, 4, generator=g)
    assert_close(pipe.vae.decode(latents).sample, ref_vae_decode(released, latents))


# ---------------------------------------------------------------- conversions ------------------------------------

VARIANTS = {
    # tied head, learned positions (bicubic), windowed blocks, no vision biases, generator qkv biases, shifted schedule
    "tied_windowed": dict(),
    # untied head, no position embedding, all blocks full attention, every bias, guidance embedding, no time shift
    "untied_full": dict(
        tied=False,
        pos_embed=False,
        full_attention_blocks=None,
        vision_qkv_bias=True,
        vision_use_bias=True,
        generator_qkv_bias=False,
        guidance_embed=True,
        timestep_shift=False,
        num_shards=1,
    ),
    # bf16 weights kept as bf16, a tied checkpoint that still stores the head, 1D-interpolated positions
    "bf16_head_copy": dict(dtype=torch.bfloat16, lm_head_copy=True, interpolate_pe_method="one_dim"),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The default variant, converted once for the loading tests."""
    root = tmp_path_factory.mktemp("default")
    released = build_released(root / "released")
    report = convert(root / "out", root / "released")
    return released, root / "out", report


def test_table_is_one_direction_and_covers_spec_names():
    names = list(random_tensors(released_config(guidance_embed=True, vision_qkv_bias=True, vision_use_bias=True)))
    names.append("llm.lm_head.weight")
    for name in names:
        mapping = map_key(name)
        assert mapping is not None, name
    assert map_key("visual_generator.backbone.final_layer.adaLN_modulation.1.weight").rule.relayout == "swap_halves"
    assert map_key("visual_tokenizer.backbone.trunk.post_trunk_norm.weight").component is None
    assert len({rule.pattern for rule in RULES}) == len(RULES)


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_pipeline_equals_released_computation(variant, converted, tmp_path):
    if variant == "tied_windowed":
        released, out, report = converted
    else:
        released = build_released(tmp_path / "released", **VARIANTS[variant])
        out = tmp_path / "out"
        report = convert(out, tmp_path / "released")
    assert report.max_errors == {"text_encoder": 0.0, "transformer": 0.0, "vae": 0.0}  # every tensor bit-exact
    pipe = OvisU1TextToImagePipeline.from_pretrained(out, dtype=torch.float32)
    assert type(pipe.text_encoder) is OvisU1ForConditionalGeneration
    check_parity(released, pipe)

    config = released.config
    assert pipe.scheduler.config.use_dynamic_shifting == config["visual_generator_config"]["timestep_shift"]
    assert pipe.scheduler.config.time_shift_type == "exponential"
    assert (pipe.scheduler.config.base_image_seq_len, pipe.scheduler.config.max_image_seq_len) == (256, 4096)
    assert pipe.processor.image_processor.image_mean == IMAGE_MEAN
    with safe_open(out / "text_encoder" / "model.safetensors", "pt") as f:
        names = set(f.keys())
        expected_dtype = VARIANTS[variant].get("dtype", torch.float32)
        assert f.get_tensor("model.visual_embeddings_table.weight").dtype == expected_dtype
    tied = config["llm_config"]["tie_word_embeddings"]
    assert ("lm_head.weight" in names) != tied
    dropped = dict(report.dropped)
    assert "visual_tokenizer.backbone.trunk.post_trunk_norm.weight" in dropped
    assert ("llm.lm_head.weight" in dropped) == (variant == "bf16_head_copy")


def test_folder_layout(converted):
    released, out, report = converted
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_ovis_u1_text_to_image", "OvisU1TextToImagePipeline"]
    assert index["text_encoder"] == ["modeling_ovis_u1", "OvisU1ForConditionalGeneration"]
    for path in [
        "README.md",
        "pipeline_ovis_u1.py",
        "processor/processing_ovis_u1.py",
        "processor/tokenizer.json",
        "processor/chat_template.jinja",
        "transformer/transformer_ovis_u1.py",
        "text_encoder/config.json",
        "text_encoder/generation_config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]:
        assert (out / path).is_file(), path
    assert not list(out.parent.glob(".out.*")), "temporary folders left behind"
    # The text encoder's module stands alone: a Hub download fetches no sibling file of a weights folder.
    module = (out / "text_encoder" / "modeling_ovis_u1.py").read_text()
    assert "from .configuration_ovis_u1" not in module and "class OvisU1Config" in module
    config = json.loads((out / "text_encoder" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_ovis_u1.OvisU1ForConditionalGeneration"
    assert "attn_implementation" not in json.dumps(config)  # flash_attention_2 in the released config is not kept
    generation = json.loads((out / "text_encoder" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 400 and generation["do_sample"] is False  # <|im_end|>, greedy (SPEC 13)
    readme = (out / "README.md").read_text()
    assert "OvisU1TextToImagePipeline.from_pretrained" in readme and "trust_remote_code=True" in readme
    assert "llm_attn_implementation='flash_attention_2'" in "\n".join(report.ignored_config_fields)
    assert not report.unknown_config_fields


def test_edit_pipeline_loads_and_runs(converted):
    _, out, _ = converted
    edit = OvisU1EditPipeline.from_pretrained(out)
    image = run(edit, "edit")
    assert image.shape[-1] == 3 and np.isfinite(image).all()


def run_without_package(script: str, tmp_path: Path) -> str:
    prelude = f"import sys\nsys.modules['ovis_u1_hf'] = None\nsys.path.insert(0, {str(TESTS)!r})\n"
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "", "HF_HOME": str(tmp_path / "hf_home")},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_remote_code_loading_without_the_package(converted, tmp_path):
    released, out, _ = converted
    understanding = tmp_path / "understanding"
    convert(understanding, released.folder, format="transformers", max_shard_size="40KB")
    assert (understanding / "model.safetensors.index.json").is_file()

    pipe = OvisU1TextToImagePipeline.from_pretrained(out)
    np.save(tmp_path / "t2i.npy", run(pipe, "t2i"))
    np.save(tmp_path / "edit.npy", run(OvisU1EditPipeline.from_pipe(pipe), "edit"))
    ids = pipe.processor(text="<image>\nhello", images=[np.zeros((40, 60, 3), np.uint8)], return_tensors="pt")
    torch.save(dict(ids), tmp_path / "inputs.pt")
    with torch.no_grad():
        np.save(tmp_path / "logits.npy", pipe.text_encoder(**ids).logits.numpy())

    stdout = run_without_package(
        f"""
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        from transformers import AutoModel, AutoProcessor
        from pipeline_calls import run
        out, tmp, understanding = {str(out)!r}, {str(tmp_path)!r}, {str(understanding)!r}
        t2i = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
        assert type(t2i).__module__.startswith("diffusers_modules"), type(t2i).__module__
        assert np.array_equal(run(t2i, "t2i"), np.load(tmp + "/t2i.npy"))
        edit = DiffusionPipeline.from_pretrained(out, trust_remote_code=True, custom_pipeline="pipeline_ovis_u1_edit")
        assert np.array_equal(run(edit, "edit"), np.load(tmp + "/edit.npy"))
        inputs = torch.load(tmp + "/inputs.pt")
        expected = np.load(tmp + "/logits.npy")
        model = AutoModel.from_pretrained(out, subfolder="text_encoder", trust_remote_code=True)
        direct = AutoModel.from_pretrained(out + "/text_encoder", trust_remote_code=True)  # the flattened module
        standalone = AutoModel.from_pretrained(understanding, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(understanding, trust_remote_code=True)
        again = processor(text="<image>\\nhello", images=[np.zeros((40, 60, 3), np.uint8)], return_tensors="pt")
        assert torch.equal(again["input_ids"], inputs["input_ids"])
        with torch.no_grad():
            assert np.array_equal(model(**inputs).logits.numpy(), expected)
            assert np.array_equal(standalone(**inputs).logits.numpy(), expected)
            assert np.array_equal(direct(**inputs).logits.numpy(), expected)
        print("remote ok")
        """,
        tmp_path,
    )
    assert "remote ok" in stdout


HUB_SIMULATION = """
import os, shutil
from types import SimpleNamespace
import numpy as np
REMOTE, SNAPSHOT = {remote!r}, {snapshot!r}
FILES = sorted(os.path.relpath(os.path.join(r, f), REMOTE) for r, _, fs in os.walk(REMOTE) for f in fs)
fetched = []

def fetch(rel):
    os.makedirs(os.path.dirname(os.path.join(SNAPSHOT, rel)), exist_ok=True)
    shutil.copyfile(os.path.join(REMOTE, rel), os.path.join(SNAPSHOT, rel))
    fetched.append(rel)
    return os.path.join(SNAPSHOT, rel)

def model_info(repo_id, **kwargs):
    return SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in FILES], sha="0" * 40)

def hf_hub_download(repo_id, filename, subfolder=None, **kwargs):
    rel = f"{{subfolder}}/{{filename}}" if subfolder else filename
    if rel not in FILES:
        raise FileNotFoundError(rel)
    return fetch(rel)

def snapshot_download(repo_id, allow_patterns=None, ignore_patterns=None, **kwargs):
    from huggingface_hub.utils import filter_repo_objects
    for rel in filter_repo_objects(FILES, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
        fetch(rel)
    return SNAPSHOT
"""
HUB_PATCHES = [
    ("diffusers.pipelines.pipeline_utils", ("model_info", "hf_hub_download", "snapshot_download")),
    ("diffusers.utils.dynamic_modules_utils", ("model_info", "hf_hub_download")),
]
PATCH_HUB = """
import importlib
for module, names in {patches!r}:
    for name in names:
        setattr(importlib.import_module(module), name, globals()[name])
"""


def test_simulated_hub_download_without_the_package(converted, tmp_path):
    """The folder served as a Hub repo: diffusers fetches only `<component>/<module>.py` from weight folders."""
    _, out, _ = converted
    np.save(tmp_path / "t2i.npy", run(OvisU1TextToImagePipeline.from_pretrained(out), "t2i"))
    stdout = run_without_package(
        HUB_SIMULATION.format(remote=str(out), snapshot=str(tmp_path / "snapshot"))
        + PATCH_HUB.format(patches=HUB_PATCHES)
        + textwrap.dedent(
            f"""
            from diffusers import DiffusionPipeline
            from pipeline_calls import run
            pipe = DiffusionPipeline.from_pretrained("someone/ovis-u1", trust_remote_code=True)
            assert np.array_equal(run(pipe, "t2i"), np.load({str(tmp_path / "t2i.npy")!r}))
            assert "text_encoder/modeling_ovis_u1.py" in fetched
            assert "text_encoder/configuration_ovis_u1.py" not in fetched  # why the module is flattened
            print("hub ok")
            """
        ),
        tmp_path,
    )
    assert "hub ok" in stdout


# ---------------------------------------------------------------- errors -----------------------------------------


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "released")


def released_with(tmp_path, mutate=None, **kwargs):
    config = released_config(**kwargs)
    tensors = random_tensors(config)
    if mutate:
        mutate(config, tensors)
    return write_released(tmp_path / "released", config, tensors).folder


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c, t: t.pop(G + "double_blocks.0.img_self_attn.qkv.weight"), "missing tensors"),
        (lambda c, t: t.update({G + "double_blocks.0.img_attn.extra.weight": torch.zeros(2)}), "unexpected tensors"),
        (lambda c, t: t.update({"vte.weight": torch.zeros(41, 32)}), r"wrong shape:\n  vte.weight \(41, 32\)"),
        (lambda c, t: t.update({G + "single_blocks.0.linear1.weight": torch.zeros(96, 32)}), "cannot be re-laid out"),
        (lambda c, t: c["visual_generator_config"].update(txt_type="t5"), "only 'refiner'"),
        (lambda c, t: c["visual_tokenizer_config"].update(hidden_stride=4), "contradicts backbone_config"),
        (
            lambda c, t: c["visual_tokenizer_config"]["backbone_config"].update(interpolate_pe_method="three_dim"),
            "(?s)invalid configuration.*interpolate_pe_method must be",
        ),
    ],
    ids=["missing", "unexpected", "wrong_shape", "unsplittable", "txt_type", "contradiction", "invalid"],
)
def test_bad_checkpoints_stop_with_a_clear_message(tmp_path, mutate, message):
    source = released_with(tmp_path, mutate)
    with pytest.raises(ConversionError, match=message):
        convert(tmp_path / "out", source, verify=False)
    assert leftovers(tmp_path) == []


def test_missing_tensor_is_named(tmp_path):
    source = released_with(tmp_path, lambda c, t: t.pop(G + "double_blocks.0.img_self_attn.qkv.weight"))
    with pytest.raises(ConversionError) as error:
        convert(tmp_path / "out", source)
    for name in ("to_q", "to_k", "to_v"):
        assert f"transformer/transformer_blocks.0.attn2.{name}.weight" in str(error.value)


def test_damaged_files(tmp_path):
    source = released_with(tmp_path)
    shard = source / "model-00002-of-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="not a complete safetensors file"):
        convert(tmp_path / "out", source)
    assert leftovers(tmp_path) == []

    shard.unlink()
    with pytest.raises(ConversionError, match="names shard files that are not in"):
        convert(tmp_path / "out", source)

    for path in source.glob("model*"):
        path.unlink()
    (source / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ConversionError, match="only safetensors"):
        convert(tmp_path / "out", source)
    assert leftovers(tmp_path) == []


def test_index_must_match_the_shards(tmp_path):
    source = released_with(tmp_path)
    index = json.loads((source / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    index["weight_map"]["vte.weight"] = next(s for s in shards if s != index["weight_map"]["vte.weight"])
    index["weight_map"]["llm.model.unlisted.weight"] = shards[0]
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        ConversionError, match="does not match the shards:\n  llm.model.unlisted.weight.*\n  vte.weight"
    ):
        convert(tmp_path / "out", source)


def test_existing_output_needs_force(tmp_path):
    source = released_with(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists; pass force=True"):
        convert(out, source)
    assert (out / "keep.txt").read_text() == "mine"
    assert leftovers(tmp_path) == ["out"]
    assert cli_main(["convert", str(out), "--source", str(source), "--format", "transformers"]) == 1

    convert(out, source, format="transformers", force=True, verify=False)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert leftovers(tmp_path) == ["out"]


def exited_pid() -> int:
    """The pid of a process that has exited and been reaped: no process has it (until the system reuses it)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


KILLED_CONVERSION = """
import sys, time
from ovis_u1_hf.conversion import convert, writer

def hang(self):  # the first component's shards are written but not yet renamed: a conversion caught midway
    print("writing", flush=True)
    time.sleep(600)

writer.ShardedSafetensorsWriter.close = hang
convert(sys.argv[1], sys.argv[2], format="transformers", verify=False, max_shard_size="100KB")
"""


def test_a_killed_conversion_leaves_a_staging_folder_that_the_next_one_removes(tmp_path):
    from ovis_u1_hf.conversion.staging import this_host

    source = released_with(tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-c", KILLED_CONVERSION, str(out), str(source)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "writing\n"
    finally:
        child.kill()  # SIGKILL: no cleanup code of the child runs
        child.wait()
    (staging,) = leftovers(tmp_path)
    assert staging.startswith(f".out.converting-{this_host()}-{child.pid}-")
    assert any(path.name.startswith(".model.part") for path in (tmp_path / staging).iterdir())

    report = convert(out, source, format="transformers", verify=False)
    assert leftovers(tmp_path) == ["out"]
    assert f"removed {staging}, left beside the output by a conversion that was killed" in report.notes


def test_only_staging_folders_of_dead_processes_of_this_machine_are_removed(tmp_path):
    import fcntl

    from ovis_u1_hf.conversion.staging import this_host

    source = released_with(tmp_path)
    host, gone = this_host(), exited_pid()
    stale = [f".out.converting-{host}-{gone}-a1b2c3d4", f".out.replaced-{host}-{gone}-a1b2c3d4"]
    kept = [
        f".out.converting-{host}-{os.getpid()}-a1b2c3d4",  # this process: alive, maybe still writing
        f".out.converting-elsewhere.example-{gone}-a1b2c3d4",  # another machine's pids cannot be checked from here
        f".other.converting-{host}-{gone}-a1b2c3d4",  # another output's: left to its own conversion
        ".out.converting-a1b2c3d4",  # records no owner
        f".out.converting-{host}-{gone}-lockedxx",  # its pid is gone here, but its lock is held (another pid namespace)
    ]
    for name in stale + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"partial")
    held = os.open(tmp_path / kept[-1], os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        report = convert(tmp_path / "out", source, format="transformers", verify=False)
    finally:
        os.close(held)
    assert leftovers(tmp_path) == sorted(["out", *kept])
    assert all((tmp_path / name / "model.safetensors").read_bytes() == b"partial" for name in kept)
    notes = [note for note in report.notes if note.startswith("removed ")]
    assert notes == [f"removed {name}, left beside the output by a conversion that was killed" for name in stale]


def test_an_output_under_a_file_fails_before_any_work(tmp_path, monkeypatch, capsys):
    from ovis_u1_hf.conversion import ReleasedCheckpoint

    source = released_with(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "out"
    message = f"The output's folder {out.parent}: {out.parent} is a file, not a folder: choose another path."

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was read")

    monkeypatch.setattr(ReleasedCheckpoint, "resolve", never)
    with pytest.raises(ConversionError) as error:
        convert(out, source)
    assert str(error.value) == message
    assert cli_main(["convert", str(out), "--source", str(source)]) == 1
    assert capsys.readouterr().err == f"ovis-u1 convert: error: {message}\n"
    assert leftovers(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def read_only_folder_command(folder: Path, command: list[str]) -> list[str]:
    """`command` run where `folder` cannot be written, even by root: tests run as root, which permissions do not stop,
    so the folder becomes a read-only tmpfs in a mount namespace of the command's own (nothing changes outside it).
    Without root, a folder without write permission does the same."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return command
    mount = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
    if subprocess.run([*mount, f"mount -t tmpfs -o ro none {folder}"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare and mount (root with CAP_SYS_ADMIN) to make a read-only folder")
    return [*mount, 'mount -t tmpfs -o ro none "$0" && exec "$@"', str(folder), *command]


def test_a_read_only_output_folder_is_one_line_before_any_work(tmp_path):
    source = released_with(tmp_path)
    folder = tmp_path / "read-only"
    folder.mkdir()
    out = folder / "out"
    command = [sys.executable, "-m", "ovis_u1_cli", "convert", str(out), "--source", str(source)]
    result = subprocess.run(read_only_folder_command(folder, command), capture_output=True, text=True, timeout=300)
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    message = f"ovis-u1 convert: error: The output's folder {folder} is not writable ({reason}): choose another path.\n"
    assert (result.returncode, result.stderr, result.stdout) == (1, message, "")
    folder.chmod(0o755)
    assert leftovers(tmp_path) == ["read-only"] and list(folder.iterdir()) == []


def test_verification_catches_a_changed_tensor(tmp_path, monkeypatch):
    from ovis_u1_hf.conversion import writer

    source = released_with(tmp_path)
    add = writer.ShardedSafetensorsWriter.add

    def corrupting_add(self, name, tensor):
        add(self, name, tensor * 1.01 if name == "norm_out.linear.weight" else tensor)

    monkeypatch.setattr(writer.ShardedSafetensorsWriter, "add", corrupting_add)
    with pytest.raises(ConversionError, match="Verification failed: the converted transformer tensor norm_out.linear.weight differs"):
        convert(tmp_path / "out", source)
    assert leftovers(tmp_path) == []


def test_unknown_config_fields_are_reported(tmp_path, caplog):
    def mutate(config, tensors):
        config["visual_generator_config"]["new_knob"] = 3
        config["llm_config"]["qwen_future_field"] = True

    source = released_with(tmp_path, mutate)
    report = convert(tmp_path / "out", source, format="transformers", verify=False)
    assert report.unknown_config_fields == ["llm_config.qwen_future_field=True", "visual_generator_config.new_knob=3"]
    assert "UNKNOWN config field" in report.summary()
    assert "new_knob" in caplog.text


def test_fields_that_transformers_4_wrote_convert_without_warnings(tmp_path, caplog, recwarn):
    """The fields a config.json saved by transformers 4.51 carries in the non-LLM sections are known: no warning."""

    def mutate(config, tensors):
        config["disable_tie_weight"] = False  # the untied case consults it too
        config["tie_word_embeddings"] = True
        config["visual_generator_config"].update(checkpoint="yak_checkpoint.pth", tie_word_embeddings=True)
        tokenizer = config["visual_tokenizer_config"]
        tokenizer.update(backbone_kwargs={"hidden_stride": 2}, image_processor_new_kwargs={}, tie_word_embeddings=True)
        tokenizer["backbone_config"]["tie_word_embeddings"] = True

    source = released_with(tmp_path, mutate, tied=False)
    caplog.set_level(logging.WARNING)
    report = convert(tmp_path / "out", source, format="transformers", verify=False)
    assert report.unknown_config_fields == []
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert [str(warning.message) for warning in recwarn] == []
    ignored = "\n".join(report.ignored_config_fields)
    assert "visual_generator_config.checkpoint='yak_checkpoint.pth'" in ignored
    assert "visual_tokenizer_config.backbone_kwargs={'hidden_stride': 2}" in ignored
    assert "lm_head.weight" in safe_open(tmp_path / "out" / "model.safetensors", "pt").keys()  # untied: own head

    def contradicting(config, tensors):
        config["visual_tokenizer_config"]["backbone_kwargs"] = {"hidden_stride": 4}

    with pytest.raises(ConversionError, match=r"backbone_kwargs.hidden_stride=4 contradicts backbone_config"):
        convert(tmp_path / "bad", released_with(tmp_path / "contradicting", contradicting), verify=False)


def test_model_card_says_where_the_weights_come_from(tmp_path):
    from huggingface_hub import ModelCard

    from ovis_u1_hf.conversion.model_card import model_card

    random = ModelCard(model_card("diffusers", None, str(tmp_path), True, random_weights=True))
    assert "RANDOM, not a trained model" in random.text and "released weights" not in random.text
    assert random.data.base_model is None and random.data.library_name == "diffusers"
    local = ModelCard(model_card("transformers", "me/x", str(tmp_path), True))
    assert f"local checkpoint folder in the released layout (`{tmp_path.name}`)" in local.text
    assert local.data.base_model is None and local.data.pipeline_tag == "image-text-to-text"
    hub = ModelCard(model_card("diffusers", "me/x", "AIDC-AI/Ovis-U1-3B", True))
    assert "The released weights of [`AIDC-AI/Ovis-U1-3B`]" in hub.text and hub.data.base_model == "AIDC-AI/Ovis-U1-3B"
    for card in (random, local, hub):
        assert "pip install -e ." in card.text and "pip install ovis-u1-hf" not in card.text
    assert 'OvisU1TextToImagePipeline.from_pretrained("me/x"' in hub.text

    # A conversion of a checkpoint that `released_layout` built (as `ovis-u1 demo` does) says that it is random.
    convert(tmp_path / "out", released_with(tmp_path), format="transformers", verify=False)
    assert "RANDOM, not a trained model" in (tmp_path / "out" / "README.md").read_text()


# ---------------------------------------------------------------- CLI, streaming, Hub upload ---------------------


def test_cli_streams_small_shards_in_the_requested_dtype(tmp_path, capsys):
    source = released_with(tmp_path)
    out = tmp_path / "out"
    cli_main(["convert", str(out), "--source", str(source), "--max-shard-size", "30KB", "--dtype", "bfloat16"])
    captured = capsys.readouterr()
    assert "verified against the released weights" in captured.out
    # One bar per phase, each run to its end; no empty bars from the libraries' own saving code.
    final = {line.split(":")[0]: line for line in captured.err.replace("\r", "\n").splitlines() if "100%" in line}
    assert set(final) == {"Writing converted weights", "Verifying against the released weights"}, captured.err
    assert "342/342" in final["Verifying against the released weights"]
    assert "0it" not in captured.err and "Writing model shards" not in captured.err
    index = json.loads((out / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and shards[0] == f"diffusion_pytorch_model-00001-of-{len(shards):05d}.safetensors"
    for shard in shards:
        path = out / "transformer" / shard
        with safe_open(path, "pt") as f:
            tensors = [f.get_tensor(name) for name in f.keys()]
        assert all(t.dtype == torch.bfloat16 for t in tensors)
        # A shard exceeds the limit only when it holds a single bigger tensor.
        assert path.stat().st_size <= 30_000 + 4096 or len(tensors) == 1
    assert json.loads((out / "text_encoder" / "config.json").read_text())["dtype"] == "bfloat16"


def test_writer_holds_at_most_one_shard(tmp_path):
    from ovis_u1_hf.conversion.writer import ShardedSafetensorsWriter

    writer = ShardedSafetensorsWriter(tmp_path, "model.safetensors", max_shard_size=1000, dtype=None)
    for i in range(10):
        writer.add(f"t{i}", torch.zeros(100 + 30 * i))  # 400 to 1480 bytes
    names = writer.close()
    assert writer.peak_buffered_bytes <= 1480
    assert len(names) == 9 and (tmp_path / "model.safetensors.index.json").is_file()
    loaded = {}
    for name in names:
        with safe_open(tmp_path / name, "pt") as f:
            loaded.update({key: f.get_tensor(key) for key in f.keys()})
    assert sorted(loaded) == sorted(f"t{i}" for i in range(10))
    with pytest.raises(ValueError, match="t0 is written twice"):
        writer.add("t0", torch.zeros(1))


def test_convert_and_verify_hold_at_most_about_one_shard(tmp_path):
    """Peak memory of `ovis-u1 convert` with verification, measured from outside the converting process: bfloat16
    weights written as float32 (every output tensor a new buffer, none a view of the mapped source)."""
    sys.path.insert(0, str(TESTS.parent / "benchmarks"))
    from convert_memory import largest_file, measure

    config = released_config(llm_layers=2, vision_layers=1)
    config["hidden_size"] = 512
    config["llm_config"].update(hidden_size=512, intermediate_size=2048, head_dim=128, vocab_size=32768)
    config["visual_generator_config"]["context_in_dim"] = 1024
    source = write_released(tmp_path / "released", config, random_tensors(config, dtype=torch.bfloat16)).folder
    out = tmp_path / "out"
    result = measure(["convert", str(out), "--source", str(source), "--max-shard-size", "40MB", "--dtype", "float32"])
    assert "verified against the released weights" in result["output"]
    shard = largest_file(out)
    assert shard > 60 * 2**20  # the float32 embedding, alone in its shard: big enough to tell from the baseline
    assert result["above_baseline"] < 1.5 * shard, (result["above_baseline"] / 2**20, shard / 2**20)


WHOAMI = {"type": "user", "name": "me", "orgs": [{"name": "team"}], "auth": {"accessToken": {"role": "write"}}}


@pytest.fixture
def local_hub(monkeypatch):
    """A local stand-in for the Hub HTTP API: it answers whoami with `hub.whoami`, creates repos and takes commits,
    recording `hub.requests` ((method, path, authorization), and each repo creation's body) and the files received.
    A path in `hub.failing` is answered with 403."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from types import SimpleNamespace

    import huggingface_hub.constants

    hub = SimpleNamespace(requests=[], received={}, whoami=WHOAMI, failing=set())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, payload, code=200):
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            hub.requests.append(("GET", self.path, self.headers.get("Authorization")))
            if self.path == "/api/whoami-v2":
                return self.reply(hub.whoami)
            self.reply({"error": "not here"}, 404)

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hub.requests.append(("POST", self.path, self.headers.get("Authorization")))
            if self.path in hub.failing:
                return self.reply({"error": "You don't have the rights to create a model under this namespace"}, 403)
            if self.path == "/api/repos/create":
                repo = json.loads(body)
                hub.requests.append(repo)
                return self.reply({"url": f"{hub.endpoint}/{repo['organization']}/{repo['name']}"})
            if self.path == "/api/validate-yaml":
                return self.reply({})
            if "/preupload/" in self.path:  # every file "regular": sent inline with the commit
                files = json.loads(body)["files"]
                return self.reply(
                    {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            if "/commit/" in self.path:
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        hub.received[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                return self.reply({"commitUrl": f"{hub.endpoint}/me/ovis-u1/commit/{'a' * 40}", "commitOid": "a" * 40})
            return self.reply({"error": self.path}, 404)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_from_environment")
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


def push_command(out, source, repo_id="me/ovis-u1"):
    return ["convert", str(out), "--source", str(source), "--format", "transformers", "--no-verify",
            "--push-to-hub", repo_id, "--private"]  # fmt: skip


def test_push_to_hub_sends_the_folder(tmp_path, local_hub):
    """`--push-to-hub` against a local stand-in for the Hub HTTP API."""
    source = released_with(tmp_path)
    out = tmp_path / "out"
    assert cli_main(push_command(out, source)) == 0
    # The token and the Hub are checked first (before converting, so before creating the repo).
    calls = [request for request in local_hub.requests if isinstance(request, tuple)]
    assert calls.index(("GET", "/api/whoami-v2", "Bearer hf_from_environment")) < calls.index(
        ("POST", "/api/repos/create", "Bearer hf_from_environment")
    )
    assert {"name": "ovis-u1", "organization": "me", "visibility": "private", "type": "model"} in local_hub.requests
    assert ("POST", "/api/models/me/ovis-u1/commit/main", "Bearer hf_from_environment") in local_hub.requests
    local = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert local_hub.received == local
    assert 'AutoModel.from_pretrained("me/ovis-u1"' in local_hub.received["README.md"].decode()


@pytest.fixture
def never_read(monkeypatch):
    """Fails the test if the checkpoint is read: a check meant to come first did not."""
    from ovis_u1_hf.conversion import ReleasedCheckpoint

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was read")

    monkeypatch.setattr(ReleasedCheckpoint, "resolve", never)


def test_push_to_hub_without_a_token_fails_before_any_work(tmp_path, local_hub, monkeypatch, capsys, never_read):
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # not logged in
    assert cli_main(push_command(tmp_path / "out", tmp_path / "released")) == 1
    assert capsys.readouterr().err == (
        "ovis-u1 convert: error: Cannot push to me/ovis-u1: no Hugging Face token. Log in with `hf auth login` or set "
        "HF_TOKEN to a token with write access, then convert again.\n"
    )
    assert local_hub.requests == [] and leftovers(tmp_path) == []


def test_push_to_an_unreachable_hub_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, never_read):
    import socket

    import huggingface_hub.constants

    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", "hf_from_environment")
    assert cli_main(push_command(tmp_path / "out", tmp_path / "released")) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "ovis-u1 convert: error: Cannot push to me/ovis-u1: the Hugging Face Hub cannot be reached (ConnectError: "
    )
    assert err.endswith("). Nothing was converted.\n") and err.count("\n") == 1 and "Traceback" not in err
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "repo_id, whoami, message",
    [
        ("me/ovis/u1", WHOAMI, "--push-to-hub me/ovis/u1 is not a Hub repo id (Repo id must be in the form"),
        ("me/ovis-u1", {**WHOAMI, "auth": {"accessToken": {"role": "read"}}}, "the token of me is read-only"),
        ("others/ovis-u1", WHOAMI, "the token is me's, who cannot create repos in others. Push to one of: me/..., "),
    ],
    ids=["repo_id", "read_only_token", "namespace"],
)
def test_push_to_hub_checks_fail_before_any_work(tmp_path, local_hub, capsys, never_read, repo_id, whoami, message):
    local_hub.whoami = whoami
    assert cli_main(push_command(tmp_path / "out", tmp_path / "released", repo_id)) == 1
    err = capsys.readouterr().err
    assert err.startswith("ovis-u1 convert: error: ") and message in err and err.count("\n") == 1
    assert leftovers(tmp_path) == []


def test_a_failed_upload_keeps_the_converted_folder_and_says_how_to_upload_it(tmp_path, local_hub, capsys):
    local_hub.failing.add("/api/repos/create")
    source = released_with(tmp_path)
    out = tmp_path / "out"
    assert cli_main(push_command(out, source)) == 1
    err = capsys.readouterr().err  # the conversion's progress bar, where enabled, then the error
    last = err.splitlines()[-1]  # the Hub's own wording of the 403 varies with the huggingface_hub version
    assert last.startswith(f"ovis-u1 convert: error: {out} is converted, but uploading it to me/ovis-u1 failed (")
    assert "the Hub answered 403: " in last
    assert last.endswith(f"): upload it with `hf upload me/ovis-u1 {out}`.") and err.endswith(last + "\n")
    assert "Traceback" not in err
    assert leftovers(tmp_path) == ["out"] and (out / "model.safetensors").is_file()


def test_simulated_hub_download_with_the_package(converted, tmp_path, monkeypatch):
    """`OvisU1TextToImagePipeline.from_pretrained(repo_id)` with a Hub stand-in: the package's classes are used."""
    _, out, _ = converted
    import importlib

    namespace = {}
    exec(HUB_SIMULATION.format(remote=str(out), snapshot=str(tmp_path / "snapshot")), namespace)
    for module, names in HUB_PATCHES:
        for name in names:
            monkeypatch.setattr(importlib.import_module(module), name, namespace[name])
    pipe = OvisU1TextToImagePipeline.from_pretrained("someone/ovis-u1")
    assert type(pipe.text_encoder) is OvisU1ForConditionalGeneration
    assert np.array_equal(run(pipe, "t2i"), run(OvisU1TextToImagePipeline.from_pretrained(out), "t2i"))


def test_hub_source_downloads_weights_and_configs_only(tmp_path, monkeypatch):
    import huggingface_hub

    source = released_with(tmp_path)
    (source / "RANDOM_WEIGHTS.txt").unlink()  # as in the released checkpoint
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(source)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    convert(tmp_path / "out", "AIDC-AI/Ovis-U1-3B", format="transformers", verify=False, revision="v1")
    ((repo_id, kwargs),) = calls
    assert repo_id == "AIDC-AI/Ovis-U1-3B" and kwargs["revision"] == "v1"
    assert "*.safetensors" in kwargs["allow_patterns"]
    assert not any(pattern.endswith((".bin", ".py", ".pt")) for pattern in kwargs["allow_patterns"])
    assert "base_model: AIDC-AI/Ovis-U1-3B" in (tmp_path / "out" / "README.md").read_text()

    with pytest.raises(ConversionError, match="is not a folder"):
        convert(tmp_path / "other", str(tmp_path / "no" / "such" / "folder"))


def test_released_sizes_plan_on_the_meta_device():
    """The table at the released sizes (SPEC 1), planned from shapes alone: no tensor is allocated."""
    from types import SimpleNamespace

    from ovis_u1_hf import OvisU1ImageProcessor, OvisU1Processor
    from ovis_u1_hf.conversion import _build_components, _expected_shapes
    from ovis_u1_hf.conversion.config import translate_config
    from ovis_u1_hf.conversion.key_map import plan_conversion
    from tiny import tiny_tokenizer

    config = released_config(
        llm_layers=28, vision_layers=24, full_attention_blocks=(7, 15, 23), decoder_depth=6, decoder_single_depth=12,
        released_widths=True,
    )  # fmt: skip

    translated = translate_config(config, None)
    processor = OvisU1Processor(OvisU1ImageProcessor(), tiny_tokenizer())
    components = _build_components(translated, processor, "diffusers")
    expected = {
        name: _expected_shapes(components[name], translated) for name in ("text_encoder", "transformer", "vae")
    }
    tensors = {name: SimpleNamespace(shape=shape) for name, shape in released_shapes(config).items()}
    tensors.update(
        {f"visual_generator.vae.{name}": SimpleNamespace(shape=shape) for name, shape in expected["vae"].items()}
    )
    plan = plan_conversion(tensors, expected, translated.decoder_width, translated.tie_word_embeddings)
    assert [name for name, _ in plan.dropped] == ["visual_tokenizer.backbone.trunk.post_trunk_norm.weight"]
    sizes = {name: sum(math.prod(shape) for shape in shapes.values()) for name, shapes in expected.items()}
    assert round(sizes["transformer"] / 1e6) == 1046 + 81  # decoder + refiner (SPEC 1)
    assert round(sizes["vae"] / 1e6) == 84
    assert translated.transformer["refiner_num_attention_heads"] == 24

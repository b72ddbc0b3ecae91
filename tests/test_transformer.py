"""OvisU1Transformer2DModel against plain computations written from SPEC 8 and 9."""

import math

import pytest
import torch

from ovis_u1_hf.pipelines.transformer_ovis_u1 import OvisU1Transformer2DModel


TINY = dict(
    in_channels=16,
    out_channels=16,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=24,
    mlp_ratio=4.0,
    axes_dims_rope=(4, 6, 6),
    theta=10000,
    refiner_num_layers=2,
    refiner_num_attention_heads=4,
)
D = TINY["attention_head_dim"] * TINY["num_attention_heads"]


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = OvisU1Transformer2DModel(**{**TINY, **overrides}).eval()
    with torch.no_grad():
        # Random everything (the default init zeroes the class token and sets norm weights to one, hiding mistakes).
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight") and param.ndim == 1:
                param.copy_(1 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0, 0.15)
    return model


def grid_ids(h, w, index=0):
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([torch.full_like(rows, index), rows, cols], -1).reshape(-1, 3).float()


# ---------------------------------------------------------------- plain references (SPEC 8-9) -------------------


def linear(x, layer):
    return x @ layer.weight.T + layer.bias


def fused(x, *layers):
    """One Linear whose output rows are the given layers' rows in order (the released fused projections)."""
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias for layer in layers])
    return x @ weight.T + bias


def silu(x):
    return x * torch.sigmoid(x)


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm(x, weight=None, bias=None, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + eps)
    return x if weight is None else x * weight + bias


def rms_norm(x, scale, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * scale


def mlp_embedder(x, layer_1, layer_2):
    return linear(silu(linear(x, layer_1)), layer_2)


def timestep_sinusoid(t, dim=256):
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    args = 1000 * t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


def rope(x, ids, axes_dim, theta):
    """Interleaved-pair rotary: x (B, S, H, Dh), ids (S, n) or (B, S, n); angles in float64, then float32."""
    angles = torch.cat(
        [
            ids[..., i, None].double() * theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
            for i, dim in enumerate(axes_dim)
        ],
        -1,
    )
    cos, sin = angles.cos().float(), angles.sin().float()
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None], sin[:, :, None]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2)


def attention(q, k, v, key_mask=None):
    """Softmax attention over (B, S, H, Dh) with heads concatenated back."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).flatten(2)


def split_heads(qkv, heads):
    """Split a fused projection as (3, heads, head_dim)."""
    return qkv.unflatten(-1, (3, heads, -1)).unbind(-3)


def ref_refiner(refiner, condition, heads):
    c = mlp_embedder(condition.mean(1), refiner.pooled_embedder.linear_1, refiner.pooled_embedder.linear_2)
    x = linear(condition, refiner.proj_in)
    x = torch.cat([refiner.cls_token.expand(x.shape[0], -1, -1), x], 1)
    for block in refiner.blocks:
        g_attn, g_mlp = linear(silu(c), block.gates.linear).chunk(2, -1)
        a = layer_norm(x, block.norm1.weight, block.norm1.bias)
        q, k, v = split_heads(fused(a, block.attn.to_q, block.attn.to_k, block.attn.to_v), heads)
        x = x + linear(attention(q, k, v), block.attn.to_out[0]) * g_attn[:, None]
        m = layer_norm(x, block.norm2.weight, block.norm2.bias)
        x = x + linear(silu(linear(m, block.ff.net[0].proj)), block.ff.net[2]) * g_mlp[:, None]
    return x[:, 1:], x[:, 0]


def ref_double_block(block, img, txt, vec, img_ids, heads, axes_dim, theta, img_key_mask=None):
    s1, c1, g1, s2, c2, g2, s3, c3, g3 = linear(silu(vec), block.norm1.linear)[:, None].chunk(9, -1)
    ts1, tc1, tg1, ts2, tc2, tg2 = linear(silu(vec), block.norm1_context.linear)[:, None].chunk(6, -1)
    joint, self_attn = block.attn, block.attn2

    a = layer_norm(img)
    iq, ik, iv = split_heads(fused((1 + c1) * a + s1, joint.to_q, joint.to_k, joint.to_v), heads)
    iq, ik = rms_norm(iq, joint.norm_q.weight), rms_norm(ik, joint.norm_k.weight)
    sq, sk, sv = split_heads(fused((1 + c3) * a + s3, self_attn.to_q, self_attn.to_k, self_attn.to_v), heads)
    sq, sk = rms_norm(sq, self_attn.norm_q.weight), rms_norm(sk, self_attn.norm_k.weight)
    tx = (1 + tc1) * layer_norm(txt) + ts1
    tq, tk, tv = split_heads(fused(tx, joint.add_q_proj, joint.add_k_proj, joint.add_v_proj), heads)
    tq, tk = rms_norm(tq, joint.norm_added_q.weight), rms_norm(tk, joint.norm_added_k.weight)

    self_out = attention(rope(sq, img_ids, axes_dim, theta), rope(sk, img_ids, axes_dim, theta), sv, img_key_mask)
    ids = torch.cat([torch.zeros(*img_ids.shape[:-2], txt.shape[1], 3), img_ids], -2)
    q, k, v = torch.cat([tq, iq], 1), torch.cat([tk, ik], 1), torch.cat([tv, iv], 1)
    joint_out = attention(rope(q, ids, axes_dim, theta), rope(k, ids, axes_dim, theta), v)
    joint_txt, joint_img = joint_out[:, : txt.shape[1]], joint_out[:, txt.shape[1] :]

    img = img + g1 * linear(joint_img, joint.to_out[0])
    img = img + g3 * linear(self_out, self_attn.to_out[0])
    img = img + g2 * linear(gelu_tanh(linear((1 + c2) * layer_norm(img) + s2, block.ff.net[0].proj)), block.ff.net[2])
    txt = txt + tg1 * linear(joint_txt, joint.to_add_out)
    t = (1 + tc2) * layer_norm(txt) + ts2
    txt = txt + tg2 * linear(gelu_tanh(linear(t, block.ff_context.net[0].proj)), block.ff_context.net[2])
    return img, txt


def ref_single_block(block, x, vec, ids, heads, axes_dim, theta):
    s, c, g = linear(silu(vec), block.norm.linear)[:, None].chunk(3, -1)
    attn = block.attn
    h = fused((1 + c) * layer_norm(x) + s, attn.to_q, attn.to_k, attn.to_v, block.proj_mlp)
    qkv, mlp = h.split([3 * x.shape[-1], h.shape[-1] - 3 * x.shape[-1]], -1)
    q, k, v = split_heads(qkv, heads)
    q, k = rms_norm(q, attn.norm_q.weight), rms_norm(k, attn.norm_k.weight)
    out = attention(rope(q, ids, axes_dim, theta), rope(k, ids, axes_dim, theta), v)
    return x + g * linear(torch.cat([out, gelu_tanh(mlp)], -1), block.proj_out)


def released_final_layer_weights(model):
    """The released shift-first adaLN weights: our scale-first halves swapped."""
    weight, bias = model.norm_out.linear.weight, model.norm_out.linear.bias
    d = weight.shape[0] // 2
    return torch.cat([weight[d:], weight[:d]]), torch.cat([bias[d:], bias[:d]])


def ref_final_layer(model, img, vec):
    weight, bias = released_final_layer_weights(model)
    shift, scale = (silu(vec) @ weight.T + bias)[:, None].chunk(2, -1)
    return linear((1 + scale) * layer_norm(img) + shift, model.proj_out)


def ref_vec(model, t, pooled, guidance=None):
    embed = model.time_text_embed
    vec = mlp_embedder(timestep_sinusoid(t), embed.timestep_embedder.linear_1, embed.timestep_embedder.linear_2)
    if guidance is not None:
        vec = vec + mlp_embedder(
            timestep_sinusoid(guidance), embed.guidance_embedder.linear_1, embed.guidance_embedder.linear_2
        )
    return vec + mlp_embedder(pooled, embed.text_embedder.linear_1, embed.text_embedder.linear_2)


def ref_forward(
    model,
    hidden_states,
    timestep,
    img_ids,
    encoder_hidden_states,
    context_hidden_states=None,
    context_ids=None,
    guidance=None,
):
    cfg = model.config
    heads, axes, theta = cfg.num_attention_heads, cfg.axes_dims_rope, cfg.theta
    img, n = hidden_states, hidden_states.shape[1]
    if context_hidden_states is not None:
        img, img_ids = torch.cat([img, context_hidden_states], 1), torch.cat([img_ids, context_ids], -2)
    img = linear(img, model.x_embedder)
    txt, pooled = ref_refiner(model.refiner, encoder_hidden_states, cfg.refiner_num_attention_heads)
    vec = ref_vec(model, timestep, pooled, guidance)
    for block in model.transformer_blocks:
        img, txt = ref_double_block(block, img, txt, vec, img_ids, heads, axes, theta)
    ids = torch.cat([torch.zeros(*img_ids.shape[:-2], txt.shape[1], 3), img_ids], -2)
    x = torch.cat([txt, img], 1)
    for block in model.single_transformer_blocks:
        x = ref_single_block(block, x, vec, ids, heads, axes, theta)
    return ref_final_layer(model, x[:, txt.shape[1] :], vec)[:, :n]


def assert_close(actual, expected, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


# ---------------------------------------------------------------- parts ------------------------------------------


@torch.no_grad()
def test_timestep_embedding():
    model = tiny_model()
    t = torch.tensor([0.0, 0.37, 1.0])
    # cos first, of 1000 * t
    assert_close(model.time_text_embed.time_proj(1000 * t), timestep_sinusoid(t))
    pooled = torch.randn(3, D)
    assert_close(model.time_text_embed(1000 * t, pooled), ref_vec(model, t, pooled))

    guided = tiny_model(guidance_embeds=True)
    g = torch.tensor([1.0, 3.5, 5.0])
    assert_close(guided.time_text_embed(1000 * t, 1000 * g, pooled), ref_vec(guided, t, pooled, g))


@torch.no_grad()
def test_refiner():
    model = tiny_model()
    condition = torch.randn(2, 7, TINY["joint_attention_dim"])
    tokens, pooled = model.refine_condition(condition)
    ref_tokens, ref_pooled = ref_refiner(model.refiner, condition, TINY["refiner_num_attention_heads"])
    assert tokens.shape == (2, 7, D)
    assert_close(tokens, ref_tokens)
    assert_close(pooled, ref_pooled)


@torch.no_grad()
@pytest.mark.parametrize("per_sample_ids", [False, True])
def test_double_block_with_context(per_sample_ids):
    model = tiny_model()
    block = model.transformer_blocks[0]
    B, L = 2, 5
    img_ids = torch.cat([grid_ids(2, 3), grid_ids(2, 2, index=1)])  # 6 noise tokens + 4 context tokens
    if per_sample_ids:
        img_ids = torch.stack([img_ids, torch.cat([grid_ids(3, 2), grid_ids(1, 4, index=1)])])
    img, txt, vec = torch.randn(B, 10, D), torch.randn(B, L, D), torch.randn(B, D)
    ids = torch.cat([torch.zeros(*img_ids.shape[:-2], L, 3), img_ids], -2)
    txt_out, img_out = block(img, txt, vec, model.pos_embed(ids))
    ref_img, ref_txt = ref_double_block(block, img, txt, vec, img_ids, 2, TINY["axes_dims_rope"], TINY["theta"])
    assert_close(img_out, ref_img)
    assert_close(txt_out, ref_txt)


@torch.no_grad()
def test_single_block():
    model = tiny_model()
    block = model.single_transformer_blocks[0]
    ids = torch.cat([torch.zeros(4, 3), grid_ids(2, 3), grid_ids(1, 3, index=1)])
    x, vec = torch.randn(2, 13, D), torch.randn(2, D)
    expected = ref_single_block(block, x, vec, ids, 2, TINY["axes_dims_rope"], TINY["theta"])
    txt_out, img_out = block(x[:, 4:], x[:, :4], vec, model.pos_embed(ids))
    assert_close(torch.cat([txt_out, img_out], 1), expected)


@torch.no_grad()
def test_final_layer_is_shift_first_with_swapped_halves():
    model = tiny_model()
    img, vec = torch.randn(2, 6, D), torch.randn(2, D)
    assert_close(model.proj_out(model.norm_out(img, vec)), ref_final_layer(model, img, vec))
    # Without the swap the two differ, so the test can tell the orders apart.
    shift, scale = (silu(vec) @ model.norm_out.linear.weight.T + model.norm_out.linear.bias)[:, None].chunk(2, -1)
    unswapped = linear((1 + scale) * layer_norm(img) + shift, model.proj_out)
    assert not torch.allclose(unswapped, ref_final_layer(model, img, vec), atol=1e-3)


# ---------------------------------------------------------------- whole model ------------------------------------


def inputs(batch=2, h=2, w=3, text_len=5, context_hw=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    kwargs = dict(
        hidden_states=torch.randn(batch, h * w, 16, generator=g),
        timestep=torch.rand(batch, generator=g),
        img_ids=grid_ids(h, w),
        encoder_hidden_states=torch.randn(batch, text_len, TINY["joint_attention_dim"], generator=g),
    )
    if context_hw is not None:
        kwargs["context_hidden_states"] = torch.randn(batch, context_hw[0] * context_hw[1], 16, generator=g)
        kwargs["context_ids"] = grid_ids(*context_hw, index=1)
    return kwargs


@torch.no_grad()
@pytest.mark.parametrize("context_hw", [None, (2, 2)])
def test_forward_matches_reference(context_hw):
    model = tiny_model()
    kw = inputs(context_hw=context_hw)
    out = model(**kw).sample
    assert out.shape == (2, 6, 16)
    assert_close(out, ref_forward(model, **kw))


@torch.no_grad()
def test_forward_with_guidance_and_per_sample_ids():
    model = tiny_model(guidance_embeds=True)
    kw = inputs(context_hw=(1, 3))
    kw["img_ids"] = torch.stack([grid_ids(2, 3), grid_ids(3, 2)])
    kw["context_ids"] = torch.stack([grid_ids(1, 3, index=1), grid_ids(3, 1, index=1)])
    kw["guidance"] = torch.tensor([2.0, 4.5])
    assert_close(model(**kw).sample, ref_forward(model, **kw))
    with pytest.raises(ValueError, match="guidance"):
        model(**{**kw, "guidance": None})


@torch.no_grad()
def test_precomputed_refiner_path():
    model = tiny_model()
    kw = inputs(batch=2, text_len=5, context_hw=(2, 2))
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    tokens, pooled = model.refine_condition(kw["encoder_hidden_states"], mask)
    direct = model(**kw, encoder_attention_mask=mask).sample
    cached = model(**{**kw, "encoder_hidden_states": tokens}, encoder_attention_mask=mask, pooled_projections=pooled)
    assert torch.equal(direct, cached.sample)


@torch.no_grad()
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("with_context", [False, True])
def test_padded_batch_equals_single_samples(padding_side, with_context):
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    text_lens, max_len = [5, 3, 4], 5
    context_lens, max_ctx = [4, 0, 2], 4  # sample 1 has no context image
    img_ids = grid_ids(2, 3)
    context_ids = [grid_ids(2, 2, index=1), grid_ids(2, 2, index=1)[:0], grid_ids(1, 2, index=1)]

    samples = []
    for text_len, ctx_len, ctx_ids in zip(text_lens, context_lens, context_ids):
        samples.append(
            dict(
                hidden_states=torch.randn(1, 6, 16, generator=g),
                timestep=torch.rand(1, generator=g),
                img_ids=img_ids,
                encoder_hidden_states=torch.randn(1, text_len, TINY["joint_attention_dim"], generator=g),
            )
        )
        if with_context and ctx_len:
            samples[-1]["context_hidden_states"] = torch.randn(1, ctx_len, 16, generator=g)
            samples[-1]["context_ids"] = ctx_ids

    def pad(x, length, value, side):
        # Padding is filled with noise, never zeros, so unmasked padding would show.
        filler = value(x.shape[0], length - x.shape[1], *x.shape[2:])
        return torch.cat([filler, x] if side == "left" else [x, filler], 1)

    noise = lambda *shape: 3 * torch.randn(*shape, generator=g)  # noqa: E731
    condition = torch.cat([pad(s["encoder_hidden_states"], max_len, noise, padding_side) for s in samples])
    text_mask = torch.cat(
        [pad(torch.ones(1, n, dtype=torch.long), max_len, torch.zeros, padding_side) for n in text_lens]
    )
    batch = dict(
        hidden_states=torch.cat([s["hidden_states"] for s in samples]),
        timestep=torch.cat([s["timestep"] for s in samples]),
        img_ids=img_ids,
        encoder_hidden_states=condition,
        encoder_attention_mask=text_mask,
    )
    if with_context:
        # Context stays right-padded (its positions come from `context_ids`); sample 1's is pure padding.
        ctx = [s.get("context_hidden_states", torch.zeros(1, 0, 16)) for s in samples]
        batch["context_hidden_states"] = torch.cat([pad(c, max_ctx, noise, "right") for c in ctx])
        batch["context_ids"] = torch.stack(
            [pad(i[None], max_ctx, lambda *s: torch.full(s, 7.0), "right")[0] for i in context_ids]
        )
        batch["context_attention_mask"] = torch.cat(
            [pad(torch.ones(1, n), max_ctx, torch.zeros, "right") for n in context_lens]
        )

    out = model(**batch).sample
    tokens, pooled = model.refine_condition(condition, text_mask)
    for i, sample in enumerate(samples):
        assert_close(out[i : i + 1], model(**sample).sample, atol=2e-6, rtol=1e-5)
        alone_tokens, alone_pooled = model.refine_condition(sample["encoder_hidden_states"])
        valid = text_mask[i].bool()
        assert_close(tokens[i, valid], alone_tokens[0], atol=2e-6, rtol=1e-5)
        assert_close(pooled[i], alone_pooled[0], atol=2e-6, rtol=1e-5)

    # Without masks the padding changes the results: the comparison above can fail.
    unmasked = model(**{k: v for k, v in batch.items() if not k.endswith("attention_mask")}).sample
    assert not torch.allclose(unmasked[1:2], model(**samples[1]).sample, atol=1e-3)


# ---------------------------------------------------------------- infrastructure ---------------------------------


@torch.no_grad()
def test_save_load_round_trip(tmp_path):
    model = tiny_model(guidance_embeds=True, qkv_bias=False)
    model.save_pretrained(tmp_path)
    loaded = OvisU1Transformer2DModel.from_pretrained(tmp_path).eval()
    assert loaded.config.guidance_embeds and not loaded.config.qkv_bias
    assert loaded.transformer_blocks[0].attn.to_q.bias is None
    kw = {**inputs(context_hw=(2, 2)), "guidance": torch.tensor([3.0, 5.0])}
    assert torch.equal(model(**kw).sample, loaded(**kw).sample)


def test_gradient_checkpointing_same_gradients():
    kw = inputs(context_hw=(2, 2))
    kw["encoder_attention_mask"] = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    weight = torch.randn(2, 6, 16)

    def grads(model):
        model.train()
        (model(**kw).sample * weight).sum().backward()
        return {name: p.grad for name, p in model.named_parameters()}

    expected = grads(tiny_model())

    model = tiny_model()
    calls = []

    def checkpoint(module, *args):
        calls.append(type(module).__name__)
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

    model.enable_gradient_checkpointing(checkpoint)
    actual = grads(model)
    assert calls.count("OvisU1TokenRefinerBlock") == TINY["refiner_num_layers"]
    assert calls.count("OvisU1TransformerBlock") == TINY["num_layers"]
    assert calls.count("OvisU1SingleTransformerBlock") == TINY["num_single_layers"]
    assert expected.keys() == actual.keys()
    for name in expected:
        assert expected[name] is not None, name
        assert_close(actual[name], expected[name], atol=1e-6, rtol=1e-5)

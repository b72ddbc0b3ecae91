"""OvisU1ForConditionalGeneration against plain computations written from SPEC 5, 6, 10 and 13."""

import math

import pytest
import torch
import torch.nn.functional as F

from ovis_u1_hf.modeling.configuration_ovis_u1 import OvisU1Config
from ovis_u1_hf.modeling.modeling_ovis_u1 import OvisU1ForConditionalGeneration
from tiny_models import IMAGE_END, IMAGE_PAD, IMAGE_START, image_ids, tiny_config, tiny_model


# ---------------------------------------------------------------- plain references (SPEC 5-6) -------------------


def rms_norm(x, weight, eps):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def reference_vision_features(tower, pixel_values, image_grid_thw, record=None):
    """
    Per-image loop over unpacked tensors with explicit attention masks: SPEC 5 written plainly. With `record` (a
    dict), also collects per image the input of the first block and the output of every block (`"hidden_states"`)
    and every block's attention weights (`"attentions"`, `(heads, n, n)`).
    """
    config = tower.config
    p, s, C = config.patch_size, config.hidden_stride, config.hidden_size
    heads = config.num_attention_heads
    head_dim = C // heads
    outputs, start = [], 0
    for t, gh, gw in image_grid_thw.tolist():
        n = t * gh * gw
        rows = pixel_values[start : start + n]
        start += n
        # Position of every row: rows come in 2x2 groups, groups in raster order over the merged grid.
        coords = []
        for _ in range(t):
            for gr in range(gh // s):
                for gc in range(gw // s):
                    for dr in range(s):
                        for dc in range(s):
                            coords.append((gr * s + dr, gc * s + dc))
        coords = torch.tensor(coords)
        emb = F.conv2d(rows.view(n, 3, p, p), tower.embeddings.patch_embedding.weight, tower.embeddings.patch_embedding.bias)
        x = rms_norm(emb.view(n, C), tower.embeddings.rms_norm.weight, config.rms_norm_eps)
        if config.preserve_original_pe:
            pe = tower.embeddings.position_embedding.weight
            side = int(math.isqrt(pe.shape[0]))
            if config.interpolate_pe_method == "two_dim":
                grid = F.interpolate(pe.T.reshape(1, C, side, side), size=(gh, gw), mode="bicubic", align_corners=False)[0]
                x = x + torch.stack([grid[:, r, c] for r, c in coords.tolist()])
            else:
                line = F.interpolate(pe.T[None], size=gh * gw, mode="linear", align_corners=False)[0]
                x = x + torch.stack([line[:, r * gw + c] for r, c in coords.tolist()])
        if not config.disable_rope:
            dim = head_dim // 2
            freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
            angles = torch.cat([coords[:, :1] * freqs, coords[:, 1:] * freqs], dim=-1)
            angles = torch.cat([angles, angles], dim=-1)
            cos, sin = angles.cos()[:, None], angles.sin()[:, None]
        # Window of every token: merged grid cut into squares of window_size / stride / patch merged tokens.
        side = config.window_size // s // p
        window = (coords[:, 0] // s // side) * 10_000 + (coords[:, 1] // s // side)
        window_mask = window[:, None] == window[None, :]
        states, maps = [x], []
        for index, layer in enumerate(tower.layers):
            full = config.fullatt_block_indexes is None or index in config.fullatt_block_indexes
            mask = torch.ones(n, n, dtype=torch.bool) if full else window_mask
            h = rms_norm(x, layer.rms_norm1.weight, config.rms_norm_eps)
            q, k, v = layer.attention.qkv(h).view(n, 3, heads, head_dim).unbind(1)
            if not config.disable_rope:
                rot = lambda y: torch.cat([-y[..., head_dim // 2 :], y[..., : head_dim // 2]], -1)
                q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
            scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim)
            attn = scores.masked_fill(~mask, float("-inf")).softmax(-1)
            x = x + layer.attention.proj(torch.einsum("hqk,khd->qhd", attn, v).reshape(n, C))
            h = rms_norm(x, layer.rms_norm2.weight, config.rms_norm_eps)
            x = x + layer.mlp.down_proj(F.silu(layer.mlp.gate_proj(h)) * layer.mlp.up_proj(h))
            states.append(x)
            maps.append(attn)
        outputs.append(x)  # no final norm (QUIRK)
        if record is not None:
            record.setdefault("hidden_states", []).append(states)
            record.setdefault("attentions", []).append(maps)
    return torch.cat(outputs)


def reference_visual_embeddings(model, pixel_values, image_grid_thw):
    tower = model.model.vision_tower
    features = reference_vision_features(tower, pixel_values, image_grid_thw)
    merged = features.reshape(-1, features.shape[-1] * tower.config.hidden_stride**2)
    logits = F.layer_norm(
        merged @ tower.head_linear.weight.T, tower.head_norm.normalized_shape, tower.head_norm.weight, tower.head_norm.bias
    )
    probs = torch.cat([logits.float().softmax(-1), torch.zeros(len(logits), 4)], dim=-1)
    return probs @ model.model.visual_embeddings_table.weight


def reference_inputs_embeds(model, ids, pixel_values, image_grid_thw):
    """SPEC 6 merge for one unpadded sequence."""
    V = model.config.vision_config.vocab_size
    table = model.model.visual_embeddings_table.weight
    embeds = model.model.language_model.embed_tokens.weight[ids.clamp(max=model.config.vocab_size - 1)].clone()
    if pixel_values is not None:
        visual = reference_visual_embeddings(model, pixel_values, image_grid_thw)
        embeds[ids == IMAGE_PAD] = visual
    embeds[ids == IMAGE_START] = table[V - 5]
    embeds[ids == IMAGE_END] = table[V - 4]
    return embeds


def reference_logits(model, ids, pixel_values=None, image_grid_thw=None):
    embeds = reference_inputs_embeds(model, ids, pixel_values, image_grid_thw)
    hidden = model.model.language_model(inputs_embeds=embeds[None]).last_hidden_state
    return model.lm_head(hidden)[0]


def random_images(config, grids, seed=0):
    g = torch.Generator().manual_seed(seed)
    image_grid_thw = torch.tensor(grids)
    row = config.vision_config.num_channels * config.vision_config.patch_size**2
    return torch.randn(int(image_grid_thw.prod(-1).sum()), row, generator=g), image_grid_thw


# ---------------------------------------------------------------- tests -------------------------------------------


VISION_VARIANTS = {
    "windowed": {},
    "all_full": {"fullatt_block_indexes": None},
    "one_dim_pe_bias": {"interpolate_pe_method": "one_dim", "qkv_bias": True, "use_bias": True},
    "no_pe_no_rope": {"preserve_original_pe": False, "disable_rope": True},
}


@pytest.mark.parametrize("variant", VISION_VARIANTS)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_vision_encoder_matches_per_image_reference(variant, attn):
    model = tiny_model(vision=VISION_VARIANTS[variant], attn_implementation=attn)
    # Windows of 2x2 merged tokens: a 10x12 grid has partial windows on both edges; images never mix.
    pixel_values, image_grid_thw = random_images(model.config, [[1, 4, 4], [1, 10, 12], [1, 6, 2]])
    tower = model.model.vision_tower
    with torch.no_grad():
        ours = tower(pixel_values, image_grid_thw)
        expected = reference_vision_features(tower, pixel_values, image_grid_thw)
    torch.testing.assert_close(ours.last_hidden_state, expected, atol=1e-5, rtol=1e-5)
    assert ours.visual_tokens.shape == (pixel_values.shape[0] // 4, model.config.vision_config.vocab_size)


def test_vision_hidden_states_are_every_block_in_patch_order():
    model = tiny_model()  # windows of 2x2 merged tokens, block 1 full attention
    pixel_values, image_grid_thw = random_images(model.config, [[1, 10, 12], [1, 6, 2]])
    tower = model.model.vision_tower
    record = {}
    with torch.no_grad():
        ours = tower(pixel_values, image_grid_thw, output_hidden_states=True)
        reference_vision_features(tower, pixel_values, image_grid_thw, record=record)
    # The windowed blocks work window by window; every recorded state is still in the processor's patch order.
    expected = [torch.cat(per_image) for per_image in zip(*record["hidden_states"])]
    assert len(ours.hidden_states) == tower.config.num_hidden_layers + 1 == len(expected)
    for got, want in zip(ours.hidden_states, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.hidden_states[0], tower.embeddings(pixel_values, image_grid_thw))
    assert torch.equal(ours.hidden_states[-1], ours.last_hidden_state)
    assert ours.attentions is None


def test_vision_attentions_with_eager_are_each_block_s_weights_in_patch_order():
    model = tiny_model(attn_implementation="eager")
    pixel_values, image_grid_thw = random_images(model.config, [[1, 10, 12], [1, 6, 2]])
    tower = model.model.vision_tower
    record = {}
    with torch.no_grad():
        ours = tower(pixel_values, image_grid_thw, output_attentions=True)
        reference_vision_features(tower, pixel_values, image_grid_thw, record=record)
    num_patches, heads = pixel_values.shape[0], tower.config.num_attention_heads
    assert len(ours.attentions) == tower.config.num_hidden_layers
    for index, (got, per_image) in enumerate(zip(ours.attentions, zip(*record["attentions"]))):
        assert got.shape == (heads, num_patches, num_patches)
        # Images never attend to each other: the maps are block-diagonal over the images.
        want = torch.stack([torch.block_diag(*(maps[head] for maps in per_image)) for head in range(heads)])
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got.sum(-1), torch.ones(heads, num_patches))
        allowed = (got > 0).any(0)
        if index in tower.config.fullatt_block_indexes:
            assert allowed.sum() == 120**2 + 12**2
        else:
            # Within windows of 2x2 merged tokens (16 patches, fewer at the edges).
            assert allowed.sum(-1).max() == 16 and allowed.sum() < 120**2 / 4


def test_vision_attentions_need_eager_attention():
    model = tiny_model(attn_implementation="sdpa")
    pixel_values, image_grid_thw = random_images(model.config, [[1, 4, 4]])
    with torch.no_grad():
        ours = model.model.vision_tower(pixel_values, image_grid_thw, output_attentions=True)
    # As for every transformers model: sdpa computes no attention weights, so none are returned.
    assert ours.attentions == ()


def test_visual_tokens_and_embeddings():
    model = tiny_model()
    pixel_values, image_grid_thw = random_images(model.config, [[1, 4, 6], [1, 2, 2]])
    with torch.no_grad():
        tokens = model.model.vision_tower(pixel_values, image_grid_thw).visual_tokens
        features = model.get_image_features(pixel_values, image_grid_thw)
        expected = reference_visual_embeddings(model, pixel_values, image_grid_thw)
    torch.testing.assert_close(tokens.sum(-1), torch.ones(len(tokens)))
    assert (tokens[:, -4:] == 0).all()  # indicator words are never predicted
    assert [len(x) for x in features.pooler_output] == [6, 1]  # one tensor per image: (4 * 6 + 2 * 2) / 2**2
    torch.testing.assert_close(torch.cat(features.pooler_output), expected, atol=1e-5, rtol=1e-5)


def test_features_skip_the_final_norm():
    """Features equal the last block's output exactly; a final RMS norm would give unit-RMS rows."""
    model = tiny_model()
    pixel_values, image_grid_thw = random_images(model.config, [[1, 4, 4]])
    tower = model.model.vision_tower
    captured = {}
    tower.layers[-1].register_forward_hook(lambda module, args, output: captured.setdefault("last", output))
    with torch.no_grad():
        features = tower(pixel_values, image_grid_thw).last_hidden_state
    # The hook sees the windowed order; the features are in the processor's order: compare as sets of rows.
    torch.testing.assert_close(features.sort(0).values, captured["last"].sort(0).values)
    rms = features.pow(2).mean(-1).sqrt()
    assert not torch.allclose(rms, torch.ones_like(rms), atol=1e-2)


def test_indicator_rows_quirk():
    model = tiny_model()
    V = model.config.vision_config.vocab_size
    ids = torch.tensor([[3, IMAGE_START, IMAGE_END, 4]])
    captured = {}

    def capture(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]

    model.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model(input_ids=ids)
    table = model.model.visual_embeddings_table.weight
    embeds = captured["embeds"][0]
    torch.testing.assert_close(embeds[1], table[V - 5])  # opening indicator shares the last visual word's row
    torch.testing.assert_close(embeds[2], table[V - 4])
    torch.testing.assert_close(embeds[0], model.get_input_embeddings().weight[3])


def test_forward_logits_match_reference_and_loss():
    model = tiny_model()
    pixel_values, image_grid_thw = random_images(model.config, [[1, 4, 6], [1, 2, 4]])
    ids = torch.tensor([[5, 6] + image_ids(6) + [7] + image_ids(2) + [8, 9]])
    labels = ids.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw, labels=labels)
        expected = reference_logits(model, ids[0], pixel_values, image_grid_thw)
    torch.testing.assert_close(out.logits[0], expected, atol=1e-5, rtol=1e-5)
    manual_loss = F.cross_entropy(expected[:-1], labels[0, 1:], ignore_index=-100)
    torch.testing.assert_close(out.loss, manual_loss, atol=1e-5, rtol=1e-5)


def test_text_only_prompt():
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits[0], reference_logits(model, ids[0]), atol=1e-5, rtol=1e-5)


def left_pad(sequences, pad_id=0):
    length = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_id] * (length - len(s)) + s for s in sequences])
    mask = torch.tensor([[0] * (length - len(s)) + [1] * len(s) for s in sequences])
    return ids, mask


def test_batch_equals_each_alone():
    model = tiny_model()
    pv_a, grid_a = random_images(model.config, [[1, 4, 6]], seed=1)
    pv_b, grid_b = random_images(model.config, [[1, 2, 2], [1, 4, 4]], seed=2)
    seq_a = [5, 6] + image_ids(6) + [7, 8, 9, 10, 11]
    seq_b = [12] + image_ids(1) + image_ids(4) + [13]
    ids, mask = left_pad([seq_a, seq_b])
    pixel_values, image_grid_thw = torch.cat([pv_a, pv_b]), torch.cat([grid_a, grid_b])
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, image_grid_thw=image_grid_thw).logits
        alone_a = model(input_ids=torch.tensor([seq_a]), pixel_values=pv_a, image_grid_thw=grid_a).logits[0]
        alone_b = model(input_ids=torch.tensor([seq_b]), pixel_values=pv_b, image_grid_thw=grid_b).logits[0]
    torch.testing.assert_close(batch[0, -len(seq_a) :], alone_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch[1, -len(seq_b) :], alone_b, atol=1e-5, rtol=1e-5)

    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    generated = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, image_grid_thw=image_grid_thw, **kwargs)
    gen_a = model.generate(input_ids=torch.tensor([seq_a]), pixel_values=pv_a, image_grid_thw=grid_a, **kwargs)
    gen_b = model.generate(input_ids=torch.tensor([seq_b]), pixel_values=pv_b, image_grid_thw=grid_b, **kwargs)
    assert generated[0, ids.shape[1] :].tolist() == gen_a[0, len(seq_a) :].tolist()
    assert generated[1, ids.shape[1] :].tolist() == gen_b[0, len(seq_b) :].tolist()


def test_generate_greedy_equals_manual_argmax_loop():
    model = tiny_model()
    pixel_values, image_grid_thw = random_images(model.config, [[1, 4, 4]])
    ids = torch.tensor([[5] + image_ids(4) + [6, 7]])
    generated = model.generate(
        input_ids=ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw, max_new_tokens=8, do_sample=False, eos_token_id=None
    )
    manual = ids
    with torch.no_grad():
        for _ in range(8):
            logits = model(input_ids=manual, pixel_values=pixel_values, image_grid_thw=image_grid_thw).logits
            manual = torch.cat([manual, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert generated.tolist() == manual.tolist()


def test_sampling_is_seeded_and_streaming_matches():
    from threading import Thread

    from transformers import TextIteratorStreamer

    from tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_model(vocab_size=len(tokenizer))
    ids = torch.tensor([tokenizer("a cat on a mat", add_special_tokens=False).input_ids])
    kwargs = dict(input_ids=ids, max_new_tokens=10, do_sample=True, top_k=20, temperature=1.5)
    torch.manual_seed(0)
    first = model.generate(**kwargs)
    torch.manual_seed(0)
    assert model.generate(**kwargs).tolist() == first.tolist()

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    thread = Thread(target=model.generate, kwargs=dict(input_ids=ids, max_new_tokens=10, do_sample=False, streamer=streamer))
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    greedy = model.generate(input_ids=ids, max_new_tokens=10, do_sample=False)
    assert streamed == tokenizer.decode(greedy[0, ids.shape[1] :])


def test_truncated_first_image_uses_trailing_tokens():
    """A sequence cut from the left keeps its image's last visual tokens, like the released merge."""
    model = tiny_model()
    pixel_values, image_grid_thw = random_images(model.config, [[1, 4, 6], [1, 2, 2]])
    full = [5] + image_ids(6) + [7] + image_ids(1) + [8]
    cut = full[4:]  # drops the start indicator and the first two visual tokens of the first image
    with torch.no_grad():
        visual = reference_visual_embeddings(model, pixel_values, image_grid_thw)
        full_embeds = reference_inputs_embeds(model, torch.tensor(full), pixel_values, image_grid_thw)
        hidden = model.model.language_model(inputs_embeds=full_embeds[None, 4:]).last_hidden_state
        expected = model.lm_head(hidden)[0]
        ours = model(input_ids=torch.tensor([cut]), pixel_values=pixel_values, image_grid_thw=image_grid_thw).logits[0]
    assert len(visual) == 7
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_generation_condition_is_last_normed_and_previous_raw_hidden_state():
    model = tiny_model(text={"num_hidden_layers": 3})
    pixel_values, image_grid_thw = random_images(model.config, [[1, 4, 4]])
    ids, mask = left_pad([[5] + image_ids(4) + [6], [7, 8] + image_ids(4) + [9, 10, 11]])
    pixel_values = torch.cat([pixel_values, pixel_values])
    image_grid_thw = torch.cat([image_grid_thw, image_grid_thw])
    layers = model.model.language_model.layers
    captured = []
    for layer in layers[-2:]:
        layer.register_forward_hook(lambda module, args, output: captured.append(output[0] if isinstance(output, tuple) else output))
    with torch.no_grad():
        condition = model.get_generation_condition(ids, mask, pixel_values, image_grid_thw)
    previous, last = captured  # hooks fire in layer order
    expected = torch.cat([model.model.language_model.norm(last), previous], dim=-1)
    assert condition.shape == (2, ids.shape[1], 2 * model.config.hidden_size)
    valid = mask.bool()
    torch.testing.assert_close(condition[valid], expected[valid])

    # Left padding does not change a row's condition.
    with torch.no_grad():
        alone = model.get_generation_condition(ids[:1, 3:], None, pixel_values[:16], image_grid_thw[:1])
    torch.testing.assert_close(condition[0, 3:], alone[0], atol=1e-5, rtol=1e-5)


def test_eager_and_sdpa_agree():
    eager = tiny_model(attn_implementation="eager")
    sdpa = tiny_model(attn_implementation="sdpa")
    assert eager.model.vision_tower.config._attn_implementation == "eager"
    assert sdpa.model.language_model.config._attn_implementation == "sdpa"
    pixel_values, image_grid_thw = random_images(eager.config, [[1, 10, 12], [1, 2, 2]])
    ids, mask = left_pad([[5] + image_ids(30) + [6], [7] + image_ids(1) + [8, 9]])
    with torch.no_grad():
        a = eager(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, image_grid_thw=image_grid_thw).logits
        b = sdpa(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, image_grid_thw=image_grid_thw).logits
    valid = mask.bool()
    torch.testing.assert_close(a[valid], b[valid], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_same_gradients():
    def grads(checkpointing):
        model = tiny_model()
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable()
        pixel_values, image_grid_thw = random_images(model.config, [[1, 4, 4]])
        ids = torch.tensor([[5] + image_ids(4) + [6, 7]])
        model(input_ids=ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw, labels=ids).loss.backward()
        return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys()
    assert any("vision_tower.layers.0" in name for name in plain)
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pixel_values=torch.randn(16, 10)), "pixel_values must have shape"),
        (dict(image_grid_thw=torch.tensor([1, 4, 4])), "image_grid_thw must have shape"),
        (dict(image_grid_thw=torch.tensor([[1, 4, 8]])), "describe 32 patches"),
        (dict(image_grid_thw=torch.tensor([[1, 3, 4], [1, 1, 4]])), "multiples of 2"),
        (dict(input_ids=torch.tensor([[5] + image_ids(6) + [6]])), "has 6 tokens but its image yields 4"),
        (dict(input_ids=torch.tensor([[5] + image_ids(2) + [6]])), "has 2 tokens but its image yields 4"),
        (dict(input_ids=torch.tensor([[5, 6]])), "have no placeholder tokens"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    model = tiny_model()
    pixel_values, image_grid_thw = random_images(model.config, [[1, 4, 4]])
    inputs = dict(input_ids=torch.tensor([[5] + image_ids(4) + [6]]), pixel_values=pixel_values, image_grid_thw=image_grid_thw)
    inputs.update(kwargs)
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_half_precision_forward_on_cpu():
    model = tiny_model()
    pixel_values, image_grid_thw = random_images(model.config, [[1, 4, 4]])
    ids = torch.tensor([[5] + image_ids(4) + [6]])
    with torch.no_grad():
        reference = model(input_ids=ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw).logits
        for dtype in (torch.bfloat16, torch.float16):
            logits = model.to(dtype)(input_ids=ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw).logits
            assert logits.dtype == dtype
            torch.testing.assert_close(logits.float(), reference, atol=0.1, rtol=0.1)
            model.float()


def test_config_defaults_are_the_released_model():
    config = OvisU1Config()
    assert config.text_config.hidden_size == 2048 and config.text_config.num_hidden_layers == 28
    assert config.vision_config.hidden_size == 1024 and config.vision_config.num_hidden_layers == 24
    assert config.vision_config.vocab_size == 32768 and config.vision_config.hidden_stride == 2
    model = OvisU1ForConditionalGeneration._from_config(tiny_config())
    assert model.model.vision_tower.head_linear.out_features == tiny_config().vision_config.vocab_size - 4


def test_released_config_asks_for_conversion():
    with pytest.raises(ValueError, match="ovis-u1 convert"):
        OvisU1Config(llm_config={"model_type": "qwen3"}, visual_tokenizer_config={}, hidden_size=2048)

"""OvisU1TextToImagePipeline and OvisU1EditPipeline against plain, unbatched sampling loops written from SPEC 10-11."""

import math

import numpy as np
import PIL.Image
import pytest
import torch

import ovis_u1_hf.pipelines.pipeline_ovis_u1 as pipeline_module
from ovis_u1_hf.pipelines import OvisU1EditPipeline, OvisU1TextToImagePipeline
from tiny_pipelines import tiny_components, tiny_scheduler


BICUBIC = PIL.Image.Resampling.BICUBIC
ATOL = 1e-5

# SPEC 10, written out here rather than imported from the pipelines.
T2I_PREFIX = (
    "<image>\nDescribe the image by detailing the color, shape, size, texture, quantity, text, and spatial "
    "relationships of the objects:"
)
UNCOND = "<image>\nGenerate an image."


# ---------------------------------------------------------------------------------------------- SPEC helpers -------


def spec_smart_resize(h, w, factor, min_pixels, max_pixels):
    """SPEC 4 (the main path: both sides at least `factor`, aspect ratio below 200)."""
    assert h >= factor and w >= factor and max(h, w) / min(h, w) <= 200
    hb, wb = round(h / factor) * factor, round(w / factor) * factor
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


def spec_fit(image, W, H):
    """SPEC 11: scale by max(W/w, H/h) (bicubic, int sizes), centre crop with Python round."""
    r = max(W / image.width, H / image.height)
    image = image.resize((int(r * image.width), int(r * image.height)), resample=BICUBIC)
    left, top = round((image.width - W) / 2), round((image.height - H) / 2)
    return image.crop((left, top, left + W, top + H))


def spec_condition_image(pipe, image, W, H):
    """SPEC 10: fitted to (W, H), then resized to smart_resize(H, W, 28, 3136, processor min_pixels)."""
    h, w = spec_smart_resize(H, W, 28, 3136, pipe.processor.image_processor.min_pixels)
    return spec_fit(image, W, H).resize((w, h), resample=BICUBIC)


@torch.no_grad()
def spec_condition(pipe, user_text, image):
    """One user turn with one image, batch 1, no padding: the raw LLM condition (1, L, 2 * hidden)."""
    prompt = "<|im_start|>user\n" + user_text + "<|im_end|>\n"
    inputs = pipe.processor(images=[image], text=prompt, return_tensors="pt")
    assert inputs["attention_mask"].all()
    return pipe.text_encoder.get_generation_condition(**inputs)


def spec_schedule(steps, num_tokens, shift):
    """SPEC 11: t = linspace(1, 0, steps + 1), exponentially shifted by the number of noise tokens."""
    t = np.linspace(1.0, 0.0, steps + 1)
    if shift:
        mu = 0.5 + (1.15 - 0.5) * (num_tokens - 256) / (4096 - 256)
        with np.errstate(divide="ignore"):
            t = np.where(t > 0, math.exp(mu) / (math.exp(mu) + (1 / t - 1)), 0.0)
    return t


def spec_pack(z):
    """b c (h 2) (w 2) -> b (h w) (c 2 2)."""
    b, c, h2, w2 = z.shape
    h, w = h2 // 2, w2 // 2
    out = torch.empty(b, h * w, c * 4, dtype=z.dtype)
    for r in range(h):
        for col in range(w):
            out[:, r * w + col] = z[:, :, 2 * r : 2 * r + 2, 2 * col : 2 * col + 2].reshape(b, c * 4)
    return out


def spec_unpack(x, h, w):
    b, _, c4 = x.shape
    c = c4 // 4
    z = torch.empty(b, c, 2 * h, 2 * w, dtype=x.dtype)
    for r in range(h):
        for col in range(w):
            z[:, :, 2 * r : 2 * r + 2, 2 * col : 2 * col + 2] = x[:, r * w + col].reshape(b, c, 2, 2)
    return z


def spec_ids(h, w, index):
    return torch.tensor([[index, r, c] for r in range(h) for c in range(w)], dtype=torch.float32)


@torch.no_grad()
def velocity(pipe, x, t, ids, condition, context=None, context_ids=None):
    """One branch alone: the RAW condition (refiner inside the call), no masks."""
    kwargs = {}
    if context is not None:
        kwargs = dict(context_hidden_states=context, context_ids=context_ids)
    return pipe.transformer(
        hidden_states=x,
        timestep=torch.tensor([t], dtype=torch.float32),
        img_ids=ids,
        encoder_hidden_states=condition,
        return_dict=False,
        **kwargs,
    )[0]


@torch.no_grad()
def spec_decode(pipe, x, h, w):
    """Unpack, z / scaling + shift, VAE decode in float32, clamp; returned in [0, 1] like output_type='pt'."""
    z = spec_unpack(x, h, w) / pipe.vae.config.scaling_factor + (pipe.vae.config.shift_factor or 0.0)
    image = pipe.vae.decode(z.float(), return_dict=False)[0].clamp(-1, 1)
    return (image + 1) / 2


@torch.no_grad()
def plain_text_to_image(pipe, prompt, H, W, latents, steps, cfg, shift, negative=None, on_step=None):
    white = PIL.Image.new("RGB", (W, H), (255, 255, 255))
    image = spec_condition_image(pipe, white, W, H)
    cond = spec_condition(pipe, T2I_PREFIX + prompt, image)
    uncond = None
    if cfg != 1:
        uncond = spec_condition(pipe, UNCOND if negative is None else "<image>\n" + negative, image)
    h, w = math.ceil(H / 16), math.ceil(W / 16)
    x, ids = spec_pack(latents), spec_ids(h, w, 0)
    t = spec_schedule(steps, h * w, shift)
    for i in range(steps):
        v = velocity(pipe, x, t[i], ids, cond)
        if uncond is not None:
            v_u = velocity(pipe, x, t[i], ids, uncond)
            v = v_u + cfg * (v - v_u)
        x = x + float(t[i + 1] - t[i]) * v
        if on_step is not None:
            x = on_step(i, x)
    return x, spec_decode(pipe, x, h, w)


@torch.no_grad()
def spec_context(pipe, fitted, seed):
    pixels = torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    dist = pipe.vae.encode(pixels).latent_dist
    sample = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(seed))
    return spec_pack((sample - (pipe.vae.config.shift_factor or 0.0)) * pipe.vae.config.scaling_factor)


@torch.no_grad()
def plain_edit(pipe, image, instruction, latents, steps, img_cfg, txt_cfg, shift, seed):
    H, W = spec_smart_resize(image.height, image.width, 32, 3136, 1003520)
    resized = image.resize((W, H), resample=BICUBIC)
    seen = spec_condition_image(pipe, resized, W, H)
    white = spec_condition_image(pipe, PIL.Image.new("RGB", (W, H), (255, 255, 255)), W, H)
    c = spec_condition(pipe, "<image>\n" + instruction.strip(), seen)
    nt = spec_condition(pipe, UNCOND, seen)
    nb = spec_condition(pipe, UNCOND, white)
    h, w = H // 16, W // 16
    context, context_ids = spec_context(pipe, spec_fit(resized, W, H), seed), spec_ids(h, w, 1)
    assert context.shape[1] == h * w
    x, ids = spec_pack(latents), spec_ids(h, w, 0)
    t = spec_schedule(steps, h * w, shift)  # noise tokens only
    for i in range(steps):
        v_c = velocity(pipe, x, t[i], ids, c, context, context_ids)
        v_nt = velocity(pipe, x, t[i], ids, nt, context, context_ids)
        v_nb = velocity(pipe, x, t[i], ids, nb)
        v = v_nb + img_cfg * (v_nt - v_nb) + txt_cfg * (v_c - v_nt)
        x = x + float(t[i + 1] - t[i]) * v
    return (H, W), x, spec_decode(pipe, x, h, w)


def random_image(width, height, seed=0, mode="RGB"):
    rng = np.random.RandomState(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return PIL.Image.fromarray(rng.randint(0, 256, (height, width, channels), dtype=np.uint8), mode)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def close(a, b, atol=ATOL):
    a, b = torch.as_tensor(np.asarray(a)).float(), torch.as_tensor(np.asarray(b)).float()
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a - b).abs().max().item()
    assert diff <= atol, f"max abs diff {diff}"


# ---------------------------------------------------------------------------------------------- fixtures -----------


@pytest.fixture(scope="module")
def components():
    return tiny_components()


def make_t2i(components, shift=True):
    pipe = OvisU1TextToImagePipeline(**{**components, "scheduler": tiny_scheduler(shift)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_edit(components, shift=True):
    pipe = OvisU1EditPipeline(**{**components, "scheduler": tiny_scheduler(shift)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def t2i(components):
    return make_t2i(components)


@pytest.fixture
def edit(components):
    return make_edit(components)


# ---------------------------------------------------------------------------------------------- 1. schedule --------


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("steps,num_tokens", [(1, 15), (4, 256), (7, 1024), (5, 4096), (3, 6000)])
def test_schedule_matches_spec(components, shift, steps, num_tokens):
    pipe = make_t2i(components, shift)
    timesteps = pipe.timesteps(steps, num_tokens, torch.device("cpu"))
    expected = spec_schedule(steps, num_tokens, shift)
    assert len(timesteps) == steps
    close(pipe.scheduler.sigmas, expected, atol=1e-6)
    close(timesteps / 1000, expected[:-1], atol=1e-6)
    if shift and num_tokens != 256 and steps > 1:
        assert not np.allclose(expected, np.linspace(1, 0, steps + 1), atol=1e-3)  # the shift does something


# ---------------------------------------------------------------------------------------------- 2. text-to-image ---


@pytest.mark.parametrize("shift,cfg", [(True, 3.5), (False, 3.5), (True, 1.0)])
def test_text_to_image_matches_plain_loop(components, shift, cfg):
    pipe = make_t2i(components, shift)
    H, W, steps = 48, 80, 3
    latents = randn(1, 4, 6, 10)
    x, expected = plain_text_to_image(pipe, "a red cat", H, W, latents, steps, cfg, shift)
    kwargs = dict(height=H, width=W, num_inference_steps=steps, guidance_scale=cfg, latents=latents)
    pt = pipe("a red cat", output_type="pt", **kwargs).images
    close(pt, expected)
    np_images = pipe("a red cat", output_type="np", **kwargs).images
    assert np_images.shape == (1, H, W, 3)
    close(np_images, expected.permute(0, 2, 3, 1))
    close(pipe("a red cat", output_type="latent", **kwargs).images, x)
    # Packed latents are accepted too.
    close(pipe("a red cat", output_type="latent", **{**kwargs, "latents": spec_pack(latents)}).images, x)


def test_text_to_image_guidance_one_skips_unconditional_branch(components, monkeypatch):
    pipe = make_t2i(components)
    calls = []
    original = pipe.text_encoder.get_generation_condition
    monkeypatch.setattr(
        pipe.text_encoder,
        "get_generation_condition",
        lambda **kw: calls.append(kw["input_ids"].shape[0]) or original(**kw),
    )
    pipe("a red cat", height=32, width=32, num_inference_steps=1, guidance_scale=1.0, output_type="latent")
    assert calls == [1]


def test_negative_prompt_changes_unconditional_branch(components):
    pipe = make_t2i(components)
    H, W, steps, cfg = 32, 48, 2, 4.0
    latents = randn(1, 4, 4, 6, seed=3)
    kwargs = dict(height=H, width=W, num_inference_steps=steps, guidance_scale=cfg, latents=latents, output_type="pt")
    default = pipe("a cat", **kwargs).images
    negative = pipe("a cat", negative_prompt="a blurry dog", **kwargs).images
    assert (default - negative).abs().max() > 1e-3
    _, expected = plain_text_to_image(pipe, "a cat", H, W, latents, steps, cfg, True, negative="a blurry dog")
    close(negative, expected)
    # A list of negative prompts, one per prompt.
    close(pipe(["a cat"], negative_prompt=["a blurry dog"], **kwargs).images, expected)
    # Without guidance there is no unconditional branch, so the negative prompt does nothing.
    kwargs["guidance_scale"] = 1.0
    close(pipe("a cat", negative_prompt="a blurry dog", **kwargs).images, pipe("a cat", **kwargs).images, atol=0)


# ---------------------------------------------------------------------------------------------- 3. edit ------------


@pytest.mark.parametrize("shift", [True, False])
def test_edit_matches_plain_loop(components, shift):
    pipe = make_edit(components, shift)
    image = random_image(100, 50, seed=1)  # -> a 64x96 target
    steps, img_cfg, txt_cfg, seed = 3, 1.7, 4.0, 7
    latents = randn(1, 4, 8, 12, seed=2)
    (H, W), x, expected = plain_edit(pipe, image, "  make it blue ", latents, steps, img_cfg, txt_cfg, shift, seed)
    assert (H, W) == (64, 96)
    kwargs = dict(
        num_inference_steps=steps, guidance_scale=txt_cfg, image_guidance_scale=img_cfg, latents=latents
    )
    g = torch.Generator().manual_seed(seed)
    pt = pipe(image, "  make it blue ", generator=g, output_type="pt", **kwargs).images
    close(pt, expected)
    g = torch.Generator().manual_seed(seed)
    close(pipe(image, "  make it blue ", generator=g, output_type="latent", **kwargs).images, x)


def test_edit_context_is_a_posterior_sample(edit):
    """With the noise fixed, the seed still matters: it draws the VAE posterior sample of the context image."""
    image = random_image(64, 64, seed=4)
    kwargs = dict(num_inference_steps=2, latents=randn(1, 4, 8, 8), output_type="latent")
    a = edit(image, "blue", generator=torch.Generator().manual_seed(0), **kwargs).images
    b = edit(image, "blue", generator=torch.Generator().manual_seed(1), **kwargs).images
    assert (a - b).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------- 4. API -------------


def test_text_to_image_seeds(t2i):
    kwargs = dict(height=32, width=48, num_inference_steps=2, output_type="np")
    a = t2i("a cat", generator=torch.Generator().manual_seed(0), **kwargs).images
    b = t2i("a cat", generator=torch.Generator().manual_seed(0), **kwargs).images
    c = t2i("a cat", generator=torch.Generator().manual_seed(1), **kwargs).images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    # The noise is a float32 standard normal draw of the unpacked latent shape.
    noise = torch.randn(1, 4, 4, 6, generator=torch.Generator().manual_seed(0))
    close(t2i("a cat", latents=noise, **kwargs).images, a, atol=0)


def test_edit_seeds(edit):
    image = random_image(80, 48, seed=5)
    kwargs = dict(num_inference_steps=2, output_type="np")
    a = edit(image, "blue", generator=torch.Generator().manual_seed(0), **kwargs).images
    b = edit(image, "blue", generator=torch.Generator().manual_seed(0), **kwargs).images
    c = edit(image, "blue", generator=torch.Generator().manual_seed(1), **kwargs).images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_text_to_image_batch_equals_single_runs(t2i):
    prompts = ["a red cat", "a small yellow moon above the old house"]  # different lengths: padded in the batch
    kwargs = dict(height=32, width=48, num_inference_steps=2, guidance_scale=3.0, output_type="np")
    latents = randn(4, 4, 4, 6, seed=11)
    negatives = ["blurry", "a dark and noisy picture"]
    batch = t2i(prompts, negative_prompt=negatives, num_images_per_prompt=2, latents=latents, **kwargs).images
    assert batch.shape == (4, 32, 48, 3)
    for p, prompt in enumerate(prompts):
        for i in range(2):
            k = 2 * p + i
            single = t2i(prompt, negative_prompt=negatives[p], latents=latents[k : k + 1], **kwargs).images
            close(batch[k], single[0])
    assert np.abs(batch[0] - batch[1]).max() > 1e-3


def test_edit_batch_equals_single_runs(edit):
    images = [random_image(64, 64, seed=6), random_image(64, 64, seed=7)]
    prompts = ["blue", "make the sky purple and add a moon"]
    kwargs = dict(num_inference_steps=2, output_type="np")
    latents = randn(4, 4, 8, 8, seed=12)
    generators = [torch.Generator().manual_seed(20 + k) for k in range(4)]
    batch = edit(images, prompts, num_images_per_prompt=2, latents=latents, generator=generators, **kwargs).images
    assert batch.shape == (4, 64, 64, 3)
    for p in range(2):
        for i in range(2):
            k = 2 * p + i
            g = torch.Generator().manual_seed(20 + k)
            single = edit(images[p], prompts[p], latents=latents[k : k + 1], generator=g, **kwargs).images
            close(batch[k], single[0])


def test_output_types_agree(t2i):
    kwargs = dict(height=32, width=48, num_inference_steps=2, latents=randn(1, 4, 4, 6, seed=8))
    pt = t2i("a cat", output_type="pt", **kwargs).images
    np_images = t2i("a cat", output_type="np", **kwargs).images
    pil = t2i("a cat", output_type="pil", **kwargs).images
    latent = t2i("a cat", output_type="latent", **kwargs).images
    assert isinstance(pt, torch.Tensor) and pt.shape == (1, 3, 32, 48)
    assert isinstance(np_images, np.ndarray) and np_images.shape == (1, 32, 48, 3)
    assert isinstance(pil, list) and len(pil) == 1 and pil[0].size == (48, 32) and pil[0].mode == "RGB"
    assert latent.shape == (1, 6, 16)
    close(np_images, pt.permute(0, 2, 3, 1))
    assert np.abs(np.asarray(pil[0]).astype(np.float32) - np_images[0] * 255).max() <= 0.5 + 1e-3
    close(spec_decode(t2i, latent, 2, 3), pt)
    assert 0 <= pt.min() and pt.max() <= 1
    out = t2i("a cat", output_type="pt", return_dict=False, **kwargs)
    assert isinstance(out, tuple) and len(out) == 1
    close(out[0], pt, atol=0)


def test_callback_on_step_end_sees_and_modifies_latents(t2i):
    H, W, steps, cfg = 32, 48, 3, 2.0
    latents = randn(1, 4, 4, 6, seed=9)
    seen = []

    def callback(pipe, i, t, kwargs):
        assert pipe is t2i and set(kwargs) == {"latents"}
        seen.append((i, float(t), kwargs["latents"].clone()))
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 1 else {}

    out = t2i(
        "a cat", height=H, width=W, num_inference_steps=steps, guidance_scale=cfg, latents=latents,
        output_type="latent", callback_on_step_end=callback,
    ).images
    manual = []

    def on_step(i, x):
        manual.append(x.clone())
        return torch.zeros_like(x) if i == 1 else x

    x, _ = plain_text_to_image(t2i, "a cat", H, W, latents, steps, cfg, True, on_step=on_step)
    assert [i for i, _, _ in seen] == list(range(steps))
    close(torch.tensor([t for _, t, _ in seen]) / 1000, spec_schedule(steps, 6, True)[:-1], atol=1e-6)
    for (_, _, got), want in zip(seen, manual):
        close(got, want)
    close(out, x)
    untouched = t2i(
        "a cat", height=H, width=W, num_inference_steps=steps, guidance_scale=cfg, latents=latents,
        output_type="latent",
    ).images
    assert (untouched - out).abs().max() > 1e-3


def test_edit_callback_called_once_per_step(edit):
    steps = []
    edit(
        random_image(64, 64), "blue", num_inference_steps=3, output_type="latent",
        callback_on_step_end=lambda pipe, i, t, kw: steps.append((i, kw["latents"].shape)) or {},
    )
    assert steps == [(i, torch.Size([1, 16, 16])) for i in range(3)]


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_edit_accepts_non_rgb_images(edit, mode):
    rgba = random_image(64, 48, seed=10, mode="RGBA")
    image = {"RGBA": rgba, "L": rgba.convert("L"), "P": rgba.convert("RGB").convert("P", palette=1, colors=32)}[mode]
    assert image.mode == mode
    H, W = spec_smart_resize(48, 64, 32, 3136, 1003520)
    kwargs = dict(num_inference_steps=2, output_type="np", latents=randn(1, 4, H // 8, W // 8, seed=1))
    got = edit(image, "blue", generator=torch.Generator().manual_seed(3), **kwargs).images
    want = edit(image.convert("RGB"), "blue", generator=torch.Generator().manual_seed(3), **kwargs).images
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------- 5. bad input ------


@pytest.fixture
def model_calls(components, monkeypatch):
    """Counts every model call on the shared components; tests assert it stays 0 when the input is rejected."""
    counter = {"n": 0}

    def counting(obj, name):
        original = getattr(obj, name)

        def wrapper(*args, **kwargs):
            counter["n"] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(obj, name, wrapper)

    counting(components["text_encoder"], "get_generation_condition")
    counting(components["text_encoder"], "forward")
    counting(components["transformer"], "forward")
    counting(components["transformer"], "refine_condition")
    counting(components["vae"], "encode")
    counting(components["vae"], "decode")
    return counter


def test_size_not_multiple_of_16_is_floored_with_warning(t2i, edit, monkeypatch):
    warnings = []
    monkeypatch.setattr(pipeline_module.logger, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    images = t2i("a cat", height=50, width=70, num_inference_steps=1, output_type="np").images
    assert images.shape == (1, 48, 64, 3)
    assert len(warnings) == 1 and "16" in warnings[0]
    images = edit(random_image(64, 64), "blue", height=40, width=90, num_inference_steps=1, output_type="np").images
    assert images.shape == (1, 32, 80, 3)
    assert len(warnings) == 2
    # A multiple of 16 does not warn.
    t2i("a cat", height=32, width=32, num_inference_steps=1, output_type="latent")
    assert len(warnings) == 2


T2I_BAD = [
    (dict(height=0), "height"),
    (dict(width=-16), "width"),
    (dict(height=8), "size"),
    (dict(height=32.0), "height"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(num_inference_steps=-2), "num_inference_steps"),
    (dict(num_inference_steps=2.5), "num_inference_steps"),
    (dict(guidance_scale=-1.0), "guidance_scale"),
    (dict(prompt=""), "prompt"),
    (dict(prompt="   "), "prompt"),
    (dict(prompt=[]), "prompt"),
    (dict(prompt=None), "prompt"),
    (dict(prompt=3), "prompt"),
    (dict(prompt=["a cat", 3]), "prompt"),
    (dict(prompt=["a cat", ""]), "prompt"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt"),
    (dict(output_type="jpeg"), "output_type"),
    (dict(latents=torch.zeros(1, 4, 4, 4)), "latents"),
    (dict(latents=torch.zeros(2, 4, 4, 6)), "latents"),
    (dict(latents=torch.zeros(1, 5, 16)), "latents"),
    (dict(generator=[torch.Generator(), torch.Generator()]), "generator"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
    (dict(prompt=["a", "b"], negative_prompt=["x"]), "negative_prompt"),
    (dict(negative_prompt=["x", "y"]), "negative_prompt"),
    (dict(negative_prompt=3), "negative_prompt"),
    (dict(negative_prompt=[3]), "negative_prompt"),
]


@pytest.mark.parametrize("bad,match", T2I_BAD, ids=[f"{i}-{m}" for i, (_, m) in enumerate(T2I_BAD)])
def test_text_to_image_rejects_bad_input(t2i, model_calls, bad, match):
    kwargs = {**dict(prompt="a cat", height=32, width=48, num_inference_steps=2, output_type="np"), **bad}
    with pytest.raises(ValueError, match=match):
        t2i(**kwargs)
    assert model_calls["n"] == 0


EDIT_BAD = [
    (dict(image=None), "image"),
    (dict(image=[]), "image"),
    (dict(prompt=["blue", "red"]), "image"),
    (dict(image=[random_image(64, 64), random_image(64, 64)]), "image"),
    (dict(prompt=""), "prompt"),
    (dict(prompt=[]), "prompt"),
    (dict(prompt=5), "prompt"),
    (dict(guidance_scale=-0.5), "guidance_scale"),
    (dict(image_guidance_scale=-0.5), "image_guidance_scale"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(height=32), "width"),
    (dict(height=0, width=32), "height"),
    (dict(height=32, width=-32), "width"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt"),
    (dict(latents=torch.zeros(1, 4, 4, 4)), "latents"),
    (dict(generator=[torch.Generator(), torch.Generator()]), "generator"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
    (dict(output_type="jpeg"), "output_type"),
    (dict(image=[random_image(64, 64), random_image(100, 50)], prompt=["a", "b"]), "size"),
]


@pytest.mark.parametrize("bad,match", EDIT_BAD, ids=[f"{i}-{m}" for i, (_, m) in enumerate(EDIT_BAD)])
def test_edit_rejects_bad_input(edit, model_calls, bad, match):
    kwargs = {**dict(image=random_image(64, 64), prompt="blue", num_inference_steps=2, output_type="np"), **bad}
    with pytest.raises(ValueError, match=match):
        edit(**kwargs)
    assert model_calls["n"] == 0

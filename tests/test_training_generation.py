"""LoRA fine-tuning of the image decoder: the loss against SPEC, adapters, resuming, data checks, checkpointing."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors import safe_open

from ovis_u1_hf.inputs import InputError
from ovis_u1_hf.training.generation_data import DataError
from ovis_u1_hf.training.generation_lora import main
from test_pipelines import spec_condition as spec_turn_condition
from test_pipelines import spec_condition_image, spec_fit, spec_ids, spec_pack, spec_smart_resize
from tiny_pipelines import tiny_edit_pipeline, tiny_text_to_image_pipeline


pytest.importorskip("peft")

BICUBIC = PIL.Image.Resampling.BICUBIC
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "white": (250, 250, 250)}
# SPEC 10, written out here rather than imported.
T2I_PREFIX = (
    "<image>\nDescribe the image by detailing the color, shape, size, texture, quantity, text, and spatial "
    "relationships of the objects:"
)
UNCONDITIONAL = "<image>\nGenerate an image."


@pytest.fixture(autouse=True)
def one_thread():
    """The models are tiny: several threads only contend (a step takes ~20x longer on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- data --------------


def square_image(rgb, index, size=(40, 48)):
    """A plain colour with a corner block of the opposite colour whose size depends on `index`."""
    width, height = size
    pixels = np.zeros((height, width, 3), np.uint8) + np.array(rgb, np.uint8)
    pixels[: 16 + 4 * index, : width // 2] = 255 - np.array(rgb, np.uint8)
    return PIL.Image.fromarray(pixels)


def write_text_to_image_data(folder):
    """Eight 40x48 images with captions, in an ImageFolder layout."""
    folder.mkdir()
    lines = []
    for index, (name, rgb) in enumerate(list(COLORS.items()) * 2):
        square_image(rgb, index).save(folder / f"{index}.png")
        lines.append(json.dumps({"file_name": f"{index}.png", "text": f"a {name} square" + " here" * (index % 3)}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def write_edit_data(folder):
    """Six edit triples: sources of two sizes (64x48 trains at 64x64, 56x40 at 96x64), targets of other sizes."""
    folder.mkdir()
    lines = []
    for index, (name, rgb) in enumerate(list(COLORS.items())[:3] * 2):
        size = (64, 48) if index % 2 else (56, 40)
        square_image(rgb, index, size).save(folder / f"source{index}.png")
        square_image(tuple(255 - c for c in rgb), index, (size[0] + 8, size[1])).save(folder / f"target{index}.png")
        text = f"  make it the opposite of {name}" + " now" * (index % 2)
        lines.append(json.dumps({"source_file": f"source{index}.png", "file_name": f"target{index}.png", "text": text}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def metadata(folder):
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny pipeline (the weights of `tiny_text_to_image_pipeline()`) and both datasets."""
    root = tmp_path_factory.mktemp("generation_lora")
    tiny_text_to_image_pipeline().save_pretrained(root / "model")
    write_text_to_image_data(root / "t2i")
    write_edit_data(root / "edit")
    return root


def run(workspace, output, *options, data="t2i", callback=None):
    # fmt: off
    argv = [
        "--model", str(workspace / "model"), "--data", str(workspace / data), "--output-dir", str(output),
        "--resolution", "32", "--lora_r", "8", "--seed", "0", "--learning_rate", "1e-2", *options,
    ]
    # fmt: on
    return main(argv, step_callback=callback)


# ---------------------------------------------------------------------------------------------- SPEC reference ----


@torch.no_grad()
def spec_condition(pipe, user_text, image, W, H):
    """SPEC 10: one user turn with the image fitted to (W, H) and resized to smart_resize(H, W, 28, 3136, min_pixels)."""
    return spec_turn_condition(pipe, user_text, spec_condition_image(pipe, image, W, H))


@torch.no_grad()
def spec_latents(pipe, image):
    """SPEC 11: pixels x / 127.5 - 1, the VAE posterior's mode, (z - shift) * scaling, packed."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    z = pipe.vae.encode(pixels).latent_dist.mean
    return spec_pack((z - (pipe.vae.config.shift_factor or 0.0)) * pipe.vae.config.scaling_factor)


def spec_sigma(u, num_tokens):
    """SPEC 11's timestep shift (exponential, mu from the number of noise tokens) applied to a draw u in (0, 1)."""
    mu = 0.5 + (1.15 - 0.5) * (num_tokens - 256) / (4096 - 256)
    return math.exp(mu) / (math.exp(mu) + (1 / u - 1))


@torch.no_grad()
def spec_loss(pipe, record, row, condition, x0, ids, context=None, context_ids=None):
    """Rectified flow: x_t = (1 - sigma) x0 + sigma n, the velocity n - x0 predicted at time sigma, squared error."""
    sigma = spec_sigma(record.u[row].item(), x0.shape[1])
    assert record.sigmas[row].item() == pytest.approx(sigma, rel=1e-6, abs=1e-7)
    noise = record.noise[row : row + 1]
    x_t = (1 - sigma) * x0 + sigma * noise
    kwargs = {} if context is None else dict(context_hidden_states=context, context_ids=context_ids)
    velocity = pipe.transformer(
        hidden_states=x_t,
        timestep=torch.tensor([sigma]),
        img_ids=ids,
        encoder_hidden_states=condition,
        return_dict=False,
        **kwargs,
    )[0]
    return ((velocity.double() - (noise - x0).double()) ** 2).mean().item()


# ---------------------------------------------------------------------------------------------- training ----------


@pytest.fixture(scope="module")
def trained(workspace):
    """40 steps of 4 images at 32x32, with a validation image at the end."""
    output = workspace / "trained"
    records = []
    # fmt: off
    losses = run(
        workspace, output, "--train_batch_size", "4", "--max_train_steps", "40",
        "--validation_prompt", "a red square", "--validation_steps", "100", "--validation_inference_steps", "2",
        callback=records.append,
    )
    # fmt: on
    return output, losses, records


def test_training_lowers_the_loss(trained):
    _, losses, records = trained
    assert len(losses) == 40 and len(records) == 40
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])
    # Two batches of four per epoch, each example once per epoch.
    for epoch in range(20):
        seen = sorted(records[2 * epoch].indices + records[2 * epoch + 1].indices)
        assert seen == list(range(8))


def test_latents_are_samples_of_the_vae_posterior(trained, workspace):
    """The default --latent_sampling: x0 = mean + std * e with e standard normal, drawn anew every step."""
    _, _, records = trained
    pipe = tiny_text_to_image_pipeline()
    implied = []
    for record in records[:6]:
        for row, index in enumerate(record.indices):
            image = PIL.Image.open(workspace / "t2i" / metadata(workspace / "t2i")[index]["file_name"]).convert("RGB")
            pixels = torch.from_numpy(np.asarray(spec_fit(image, 32, 32), dtype=np.float32)).permute(2, 0, 1)[None]
            with torch.no_grad():
                posterior = pipe.vae.encode(pixels / 127.5 - 1).latent_dist
            scale = pipe.vae.config.scaling_factor
            mean, std = spec_pack(posterior.mean * scale)[0], spec_pack(posterior.std * scale)[0]
            implied.append((record.latents[row] - mean) / std)
    implied = torch.stack(implied)
    assert abs(implied.mean().item()) < 0.1 and 0.9 < implied.std().item() < 1.1
    # Each epoch draws every example's latents anew.
    index = records[0].indices[0]
    later = next(record for record in records[2:4] if index in record.indices)
    assert not torch.allclose(records[0].latents[0], later.latents[later.indices.index(index)])


def cosmap(sigma):
    """SD3's cosmap loss weight, 2 / (pi (1 - 2 sigma + 2 sigma^2))."""
    return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))


@pytest.mark.parametrize("scheme", ["none", "logit_normal", "cosmap"])
def test_first_loss_is_the_rectified_flow_loss_of_spec(workspace, tmp_path, scheme):
    """Step 0 against SPEC: the latents of the fitted images, the released prompt with a white image, the inference
    timestep shift of the draws, the velocity target at time sigma; padded conditions of different lengths."""
    records = []
    losses = run(
        workspace, tmp_path, "--train_batch_size", "4", "--max_train_steps", "1", "--latent_sampling", "mode",
        "--weighting_scheme", scheme, callback=records.append,
    )
    record = records[0]
    pipe = tiny_text_to_image_pipeline()
    white = PIL.Image.new("RGB", (32, 32), (255, 255, 255))
    total = []
    for row, index in enumerate(record.indices):
        line = metadata(workspace / "t2i")[index]
        image = PIL.Image.open(workspace / "t2i" / line["file_name"]).convert("RGB")
        x0 = spec_latents(pipe, spec_fit(image, 32, 32))
        torch.testing.assert_close(record.latents[row : row + 1], x0, rtol=1e-4, atol=1e-5)
        condition = spec_condition(pipe, T2I_PREFIX + line["text"], white, 32, 32)
        weight = cosmap(record.sigmas[row].item()) if scheme == "cosmap" else 1.0
        total.append(weight * spec_loss(pipe, record, row, condition, x0, spec_ids(2, 2, 0)))
    assert len(set(len(metadata(workspace / "t2i")[i]["text"]) for i in record.indices)) > 1  # padding at work
    assert record.step == 0 and record.timesteps.tolist() == pytest.approx(record.sigmas.tolist(), abs=1e-6)
    assert losses[0] == pytest.approx(np.mean(total), rel=1e-5)
    assert record.loss == pytest.approx(losses[0], rel=1e-6)


def test_condition_dropout_trains_the_unconditional_branch(workspace, tmp_path):
    records = []
    losses = run(
        workspace, tmp_path, "--train_batch_size", "2", "--max_train_steps", "1", "--latent_sampling", "mode",
        "--condition_dropout_prob", "1", callback=records.append,
    )
    record = records[0]
    pipe = tiny_text_to_image_pipeline()
    white = PIL.Image.new("RGB", (32, 32), (255, 255, 255))
    condition = spec_condition(pipe, UNCONDITIONAL, white, 32, 32)
    total = [spec_loss(pipe, record, row, condition, record.latents[row : row + 1], spec_ids(2, 2, 0)) for row in range(2)]
    assert record.dropped.tolist() == [1, 1]
    assert losses[0] == pytest.approx(np.mean(total), rel=1e-5)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_edit_triples_train_with_the_source_as_context(workspace, tmp_path, dropout):
    """Edit: the instruction with the source (resized to the edit size) for the language model, the source's latents
    as context tokens (1, row, col); with dropout 0.5 every example drops the text (1) or both (2, no context)."""
    records = []
    # fmt: off
    losses = run(
        workspace, tmp_path, "--train_batch_size", "3", "--max_train_steps", "2", "--latent_sampling", "mode",
        "--condition_dropout_prob", str(dropout), "--learning_rate", "1e-9", data="edit", callback=records.append,
    )
    # fmt: on
    pipe = tiny_edit_pipeline()
    lines = metadata(workspace / "edit")
    sizes = set()
    for record, loss in zip(records, losses):
        total = []
        for row, index in enumerate(record.indices):
            source = PIL.Image.open(workspace / "edit" / lines[index]["source_file"]).convert("RGB")
            target = PIL.Image.open(workspace / "edit" / lines[index]["file_name"]).convert("RGB")
            H, W = spec_smart_resize(source.height, source.width, 32, 3136, 1003520)
            sizes.add((H, W))
            source = source.resize((W, H), resample=BICUBIC)
            x0 = spec_latents(pipe, spec_fit(target, W, H))
            torch.testing.assert_close(record.latents[row : row + 1], x0, rtol=1e-4, atol=1e-5)
            context = spec_latents(pipe, source)
            torch.testing.assert_close(record.context[row : row + 1], context, rtol=1e-4, atol=1e-5)
            kind = 0 if record.dropped is None else record.dropped[row].item()
            text = "<image>\n" + lines[index]["text"].strip() if kind == 0 else UNCONDITIONAL
            image = PIL.Image.new("RGB", (W, H), (255, 255, 255)) if kind == 2 else source
            condition = spec_condition(pipe, text, image, W, H)
            h, w = H // 16, W // 16
            if kind == 2:  # no both: no context tokens at all
                total.append(spec_loss(pipe, record, row, condition, x0, spec_ids(h, w, 0)))
            else:
                total.append(spec_loss(pipe, record, row, condition, x0, spec_ids(h, w, 0), context, spec_ids(h, w, 1)))
        assert loss == pytest.approx(np.mean(total), rel=1e-5)
    assert sizes == {(64, 64), (64, 96)}
    if dropout:
        assert {kind for record in records for kind in record.dropped.tolist()} == {1, 2}


def test_saved_lora_loads_into_a_fresh_pipeline(trained):
    output, _, _ = trained
    assert sorted(p.name for p in output.iterdir()) == ["pytorch_lora_weights.safetensors", "validation"]
    with safe_open(output / "pytorch_lora_weights.safetensors", framework="pt") as f:
        keys = list(f.keys())
        assert all(key.startswith("transformer.") and ".lora_" in key for key in keys)
        # The MMDiT blocks only: the refiner and the final layer stay as they were.
        blocks = ("transformer.transformer_blocks.", "transformer.single_transformer_blocks.")
        assert all(key.startswith(blocks) for key in keys)
        assert any(".attn2.to_q." in key for key in keys) and any(".proj_mlp." in key for key in keys)
        adapter = json.loads(f.metadata()["lora_adapter_metadata"])
        assert adapter["transformer.r"] == 8 and adapter["transformer.lora_alpha"] == 8

    call = dict(prompt="a red square", height=32, width=32, num_inference_steps=2, output_type="np")
    pipe = tiny_text_to_image_pipeline()
    base = pipe(generator=torch.Generator().manual_seed(0), **call).images[0]
    pipe.load_lora_weights(output)
    adapted = pipe(generator=torch.Generator().manual_seed(0), **call).images[0]
    assert np.abs(adapted - base).max() > 0.05
    # The validation image of the last step came from the model in training: the loaded file holds the same weights.
    validation = np.asarray(PIL.Image.open(output / "validation" / "step-000040-0.png"), dtype=np.float64) / 255
    assert np.abs(validation - adapted).max() <= 1 / 255 + 1e-6
    pipe.unload_lora_weights()
    np.testing.assert_array_equal(pipe(generator=torch.Generator().manual_seed(0), **call).images[0], base)


def test_resuming_continues_the_same_loss_curve(workspace, tmp_path):
    """Checkpoints every 2 of 6 steps (at most 2 kept), with accumulation and LoRA dropout: a run resumed from step 4
    gives the uninterrupted run's last losses; "latest" finds the newest checkpoint."""
    options = [
        "--train_batch_size", "2", "--gradient_accumulation_steps", "2", "--max_train_steps", "6", "--lora_dropout",
        "0.2", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2", "--learning_rate", "5e-3",
    ]  # fmt: skip
    uninterrupted = run(workspace, tmp_path / "a", *options)
    written = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert written == ["checkpoint-4", "checkpoint-6", "pytorch_lora_weights.safetensors"]
    checkpoint = tmp_path / "a" / "checkpoint-4"
    saved = {p.name for p in checkpoint.iterdir()}
    assert {"pytorch_lora_weights.safetensors", "optimizer.bin", "training_state.json"} <= saved
    assert json.loads((checkpoint / "training_state.json").read_text()) == {"global_step": 4}

    resumed = run(workspace, tmp_path / "b", *options, "--resume_from_checkpoint", str(checkpoint))
    assert len(uninterrupted) == 6 and len(resumed) == 2
    np.testing.assert_allclose(resumed, uninterrupted[4:], rtol=1e-6)

    (tmp_path / "c").mkdir()
    shutil.copytree(checkpoint, tmp_path / "c" / "checkpoint-4")
    latest = run(workspace, tmp_path / "c", *options, "--resume_from_checkpoint", "latest")
    np.testing.assert_allclose(latest, uninterrupted[4:], rtol=1e-6)
    # A checkpoint's name is looked up in the output folder (as diffusers' scripts do); checkpoint-6 is saved anew.
    again = run(workspace, tmp_path / "a", *options, "--resume_from_checkpoint", "checkpoint-4")
    np.testing.assert_allclose(again, uninterrupted[4:], rtol=1e-6)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == written
    with safe_open(tmp_path / "a" / "pytorch_lora_weights.safetensors", framework="pt") as a, safe_open(
        tmp_path / "c" / "pytorch_lora_weights.safetensors", framework="pt"
    ) as c:
        for key in a.keys():
            torch.testing.assert_close(a.get_tensor(key), c.get_tensor(key), rtol=1e-6, atol=1e-7)


def test_gradient_checkpointing_gives_the_same_gradients(workspace, tmp_path):
    """Two steps (the second with non-zero LoRA B, so every LoRA weight has a gradient), refiner LoRA included."""
    grads = {}
    for checkpointing in (False, True):
        captured = []

        def capture(record):
            model = record.model
            captured.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
            assert model.gradient_checkpointing == checkpointing

        options = ["--train_batch_size", "4", "--max_train_steps", "2", "--train_refiner"]
        options += ["--gradient_checkpointing"] if checkpointing else []
        run(workspace, tmp_path / str(checkpointing), *options, callback=capture)
        grads[checkpointing] = captured
    assert any(name.startswith("refiner.blocks.") for name in grads[True][0])
    for plain, checkpointed in zip(grads[False], grads[True]):
        assert plain.keys() == checkpointed.keys()
        for name in plain:
            torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-6, atol=1e-9)
    assert all(grad.abs().max() > 0 for grad in grads[False][1].values())


def tokens(record):
    return record.latents.shape[1]


@pytest.mark.parametrize("buckets", [["--aspect_ratio_buckets", "--resolution", "64"], ["--buckets", "32,96;64,64"]])
def test_aspect_ratio_buckets_batch_images_of_one_size(tmp_path, workspace, buckets):
    """Wide images (100x40) go to the 32x96 bucket, 40x48 ones to 64x64; a batch never mixes them."""
    data = tmp_path / "data"
    data.mkdir()
    lines = []
    for index in range(6):
        size = (100, 40) if index < 3 else (40, 48)
        square_image((40 * index, 90, 160), index, size).save(data / f"{index}.png")
        lines.append(json.dumps({"file_name": f"{index}.png", "text": f"image {index}"}))
    (data / "metadata.jsonl").write_text("\n".join(lines))
    records = []
    # fmt: off
    main([
        "--model", str(workspace / "model"), "--data", str(data), "--output-dir", str(tmp_path / "out"),
        "--train_batch_size", "2", "--max_train_steps", "8", "--latent_sampling", "mode", *buckets,
    ], step_callback=records.append)
    # fmt: on
    pipe = tiny_text_to_image_pipeline()
    for record in records:
        wide = record.indices[0] < 3
        assert all((index < 3) == wide for index in record.indices)
        assert tokens(record) == (2 * 6 if wide else 4 * 4)
        index = record.indices[0]
        image = PIL.Image.open(data / f"{index}.png").convert("RGB")
        x0 = spec_latents(pipe, spec_fit(image, 96, 32) if wide else spec_fit(image, 64, 64))
        torch.testing.assert_close(record.latents[:1], x0, rtol=1e-4, atol=1e-5)
    # Four batches per epoch (2 + 1 of each size), two epochs, each image twice.
    assert sorted(i for record in records for i in record.indices) == sorted(list(range(6)) * 2)


def test_random_flip_draws_flipped_and_unflipped_latents(workspace, tmp_path):
    records = []
    run(
        workspace, tmp_path, "--train_batch_size", "8", "--max_train_steps", "3", "--latent_sampling", "mode",
        "--random_flip", callback=records.append,
    )
    pipe = tiny_text_to_image_pipeline()
    flipped = []
    for record in records:
        for row, index in enumerate(record.indices):
            image = spec_fit(PIL.Image.open(workspace / "t2i" / f"{index}.png").convert("RGB"), 32, 32)
            straight = spec_latents(pipe, image)
            mirrored = spec_latents(pipe, image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT))
            as_is = torch.allclose(record.latents[row : row + 1], straight, rtol=1e-4, atol=1e-5)
            assert as_is or torch.allclose(record.latents[row : row + 1], mirrored, rtol=1e-4, atol=1e-5)
            flipped.append(not as_is)
    assert 0 < sum(flipped) < len(flipped)


def test_conditions_cached_on_disk_train_as_in_memory_and_the_edit_lora_loads(workspace, tmp_path):
    options = ["--train_batch_size", "3", "--max_train_steps", "4", "--condition_dropout_prob", "0.3"]
    in_memory = run(workspace, tmp_path / "a", *options, data="edit")
    on_disk = run(workspace, tmp_path / "b", *options, "--cache_dir", str(tmp_path / "cache"), data="edit")
    assert on_disk == in_memory
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names == [f"{i:08d}.safetensors" for i in range(6)] + ["no_both-64x64.safetensors", "no_both-64x96.safetensors"]

    pipe = tiny_edit_pipeline()
    source = PIL.Image.open(workspace / "edit" / "source1.png")
    call = dict(image=source, prompt="make it blue", num_inference_steps=2, output_type="np")
    base = pipe(generator=torch.Generator().manual_seed(0), **call).images[0]
    pipe.load_lora_weights(tmp_path / "b")
    assert np.abs(pipe(generator=torch.Generator().manual_seed(0), **call).images[0] - base).max() > 0.01
    pipe.unload_lora_weights()
    np.testing.assert_array_equal(pipe(generator=torch.Generator().manual_seed(0), **call).images[0], base)


# ---------------------------------------------------------------------------------------------- bad input ---------


T2I_LINE = '{"file_name": "0.png", "text": "a cat"}'
EDIT_LINE = '{"source_file": "0.png", "file_name": "0.png", "text": "a"}'
BAD_LINES = [
    (T2I_LINE + '\n{"file_name": "missing.png", "text": "a dog"}', ":2: `file_name` .*missing.png does not exist"),
    (T2I_LINE + '\n\n{"file_name": "0.png", "text": "  "}', ":3: the caption `text` is missing or empty"),
    (T2I_LINE + '\n{"file_name": "0.png", "text": "a cat"', ":2: not valid JSON"),
    ('["0.png", "a cat"]', ":1: each line must be a JSON object"),
    ('{"file_name": "notes.txt", "text": "a cat"}', ":1: `file_name` .*notes.txt is not an image"),
    (T2I_LINE + "\n" + EDIT_LINE, ":2: this line has a `source_file`"),
    (EDIT_LINE + "\n" + T2I_LINE, ":2: this line needs a `source_file`"),
    ('{"source_file": "1.png", "file_name": "0.png", "text": "b"}', ":1: `source_file` .*1.png does not exist"),
    ('{"source_file": "0.png", "file_name": "0.png", "instruction": "b"}', ":1: the instruction `text` is missing"),
    ("", " holds no examples"),
]


@pytest.mark.parametrize("content, message", BAD_LINES)
def test_bad_data_is_reported_with_its_line_before_any_model_loads(tmp_path, content, message):
    data = tmp_path / "data"
    data.mkdir()
    square_image((1, 2, 3), 0).save(data / "0.png")
    (data / "notes.txt").write_text("not an image")
    (data / "metadata.jsonl").write_text(content)
    # The model folder does not exist: reaching the loading would raise another error.
    argv = ["--model", str(tmp_path / "no-model"), "--data", str(data), "--output-dir", str(tmp_path / "out")]
    with pytest.raises(DataError, match=rf"metadata.jsonl{message}"):
        main(argv)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--resolution", "40"], "--resolution must be a multiple of 32"),
        (["--buckets", "32,48"], "Bucket 32,48"),
        (["--train_batch_size", "0"], "--train_batch_size must be a positive integer"),
        (["--data", "{edit}", "--random_flip"], "--random_flip is for text-to-image data"),
        (["--data", "{edit}", "--validation_prompt", "x"], "needs both --validation_prompt and --validation_image"),
        (["--resume_from_checkpoint", "{root}"], "is not a checkpoint folder"),
    ],
)
def test_bad_options_are_reported_before_any_model_loads(workspace, tmp_path, options, message):
    options = [o.format(edit=workspace / "edit", root=tmp_path) for o in options]
    argv = ["--model", str(tmp_path / "no-model"), "--data", str(workspace / "t2i"), "--output-dir", str(tmp_path / "out")]
    with pytest.raises(InputError, match=message):
        main(argv + options)


def test_command_line_with_bf16(workspace, tmp_path):
    """`python -m ...` with mixed precision (its own process: accelerate's state is per process): the LoRA weights
    train and are saved in float32; a data error exits with status 2 and one line."""
    # fmt: off
    command = [
        sys.executable, "-m", "ovis_u1_hf.training.generation_lora", "--model", str(workspace / "model"),
        "--data", str(workspace / "t2i"), "--output-dir", str(tmp_path / "out"), "--resolution", "32",
        "--max_train_steps", "2", "--mixed_precision", "bf16", "--train_batch_size", "8",
    ]
    # fmt: on
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    with safe_open(tmp_path / "out" / "pytorch_lora_weights.safetensors", framework="pt") as f:
        assert all(f.get_tensor(key).dtype == torch.float32 for key in f.keys())

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metadata.jsonl").write_text('{"file_name": "x.png", "text": "a"}\n')
    command[command.index("--data") + 1] = str(tmp_path / "bad")
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2
    bad = tmp_path / "bad"
    assert done.stderr.strip().splitlines() == [
        f"generation_lora: error: {bad / 'metadata.jsonl'}:1: `file_name` {bad / 'x.png'} does not exist: check the "
        f"path (relative to {bad})."
    ]

"""The `ovis-u1` command line on a tiny saved pipeline folder; what `--model` may name."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ovis_u1_hf import OvisU1TextToImagePipeline
from ovis_u1_hf.cli import main
from tiny_pipelines import tiny_text_to_image_pipeline


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    tiny_text_to_image_pipeline().save_pretrained(path)
    return path


def test_generate_writes_the_pipeline_image(folder, tmp_path, capsys):
    output = tmp_path / "out.png"
    args = ["generate", "a red cat", "--model", str(folder), "--height", "32", "--width", "48", "--steps", "2"]
    assert main([*args, "--seed", "3", "--output", str(output)]) == 0
    assert capsys.readouterr().out.strip() == str(output)
    pipe = tiny_text_to_image_pipeline()
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a red cat", height=32, width=48, num_inference_steps=2, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(np.asarray(Image.open(output)), np.asarray(expected.images[0]))


def test_generate_count_writes_numbered_files(folder, tmp_path):
    args = ["generate", "a cat", "--model", str(folder), "--height", "32", "--width", "32", "--steps", "1"]
    main([*args, "--count", "2", "--output", str(tmp_path / "cat.png")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat-0.png", "cat-1.png"]


def test_edit_writes_an_image_of_the_edit_size(folder, tmp_path):
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(source)
    output = tmp_path / "edited.png"
    main(["edit", str(source), "make it blue", "--model", str(folder), "--steps", "1", "--output", str(output)])
    assert Image.open(output).size == (96, 64)  # smart_resize(40, 56, 32, 3136, 1003520) = (64, 96)


def test_chat_streams_the_greedy_answer(folder, capsys):
    from ovis_u1_hf import OvisU1ForConditionalGeneration, OvisU1Processor

    image = folder / "image.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(image)
    main(["chat", "what is it?", "--image", str(image), "--model", str(folder), "--max-new-tokens", "5"])
    printed = capsys.readouterr().out

    model = OvisU1ForConditionalGeneration.from_pretrained(folder / "text_encoder")
    processor = OvisU1Processor.from_pretrained(folder / "processor")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[Image.open(image)], text=prompt, return_tensors="pt")
    tokens = model.generate(**inputs, max_new_tokens=5, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert printed == processor.decode(tokens, skip_special_tokens=True) + "\n"


def test_progress_bars_show_loading_and_sampling(folder, tmp_path, capsys):
    args = ["generate", "a cat", "--model", str(folder), "--height", "32", "--width", "32", "--steps", "3"]
    main([*args, "--output", str(tmp_path / "cat.png")])
    shown = capsys.readouterr().err
    assert "Loading pipeline components" in shown and "3/3" in shown


def test_chat_on_an_understanding_folder_uses_its_root(folder, tmp_path, capsys):
    from ovis_u1_hf import OvisU1ForConditionalGeneration, OvisU1Processor

    understanding = tmp_path / "understanding"
    OvisU1ForConditionalGeneration.from_pretrained(folder / "text_encoder").save_pretrained(understanding)
    OvisU1Processor.from_pretrained(folder / "processor").save_pretrained(understanding)
    main(["chat", "what is it?", "--model", str(folder), "--max-new-tokens", "4"])
    expected = capsys.readouterr().out
    main(["chat", "what is it?", "--model", str(understanding), "--max-new-tokens", "4"])
    assert capsys.readouterr().out == expected

    assert main(["generate", "a cat", "--model", str(understanding)]) == 2
    assert capsys.readouterr().err == (
        f"ovis-u1 generate: error: {understanding} holds the understanding model only; `ovis-u1 generate` needs a "
        "pipeline folder (`ovis-u1 convert` writes one).\n"
    )


# ------------------------------------------------------------------------------------- what --model names -------


@pytest.fixture(scope="module")
def released_folder(tmp_path_factory):
    from released import build_released

    return build_released(tmp_path_factory.mktemp("released") / "Ovis-U1-tiny", num_shards=2).folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("OVIS_U1_CACHE", str(tmp_path / "ovis-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "ovis-cache"


def test_a_released_folder_is_converted_once_into_the_cache(released_folder, cache, tmp_path, capsys):
    args = ["generate", "a cat", "--model", str(released_folder), "--height", "32", "--width", "32", "--steps", "2"]
    main([*args, "--output", str(tmp_path / "first.png")])
    (converted,) = (cache / "converted").iterdir()
    assert converted.name.startswith("Ovis-U1-tiny-") and (converted / "model_index.json").is_file()
    assert f"converting it once into {converted}" in capsys.readouterr().err
    stamp = (converted / "model_index.json").stat().st_mtime_ns

    main([*args, "--output", str(tmp_path / "second.png")])
    assert "converting" not in capsys.readouterr().err
    assert [p.name for p in (cache / "converted").iterdir()] == [converted.name]
    assert (converted / "model_index.json").stat().st_mtime_ns == stamp
    first, second = (np.asarray(Image.open(tmp_path / name)) for name in ("first.png", "second.png"))
    assert np.array_equal(first, second)

    pipe = OvisU1TextToImagePipeline.from_pretrained(converted)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a cat", height=32, width=32, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(first, np.asarray(expected.images[0]))


def test_the_cache_removes_staging_folders_of_killed_conversions_only(released_folder, cache):
    from ovis_u1_hf.cache import resolve_model
    from ovis_u1_hf.conversion.staging import this_host

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid now names no process
    host, converted = this_host(), cache / "converted"
    stale = f".Ovis-U1-tiny-0123456789ab.converting-{host}-{child.pid}-a1b2c3d4"  # any output's: converted/ is ours
    live = f".AIDC-AI--Ovis-U1-3B.converting-{host}-{os.getpid()}-a1b2c3d4"
    for name in (stale, live, "notes"):
        (converted / name).mkdir(parents=True)
    messages = []
    resolved = resolve_model(str(released_folder), log=messages.append)
    assert sorted(p.name for p in converted.iterdir()) == sorted([live, "notes", Path(resolved.path).name])
    assert messages[0] == f"Removed {converted / stale}, left by a conversion that was killed."


def test_the_released_hub_checkpoint_is_converted_once_then_used_offline(released_folder, cache, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import HfApi

    from ovis_u1_hf import cache as cache_module

    # The released checkpoint carries no marker of random weights.
    files = [SimpleNamespace(rfilename=p.name) for p in released_folder.iterdir() if p.name != "RANDOM_WEIGHTS.txt"]
    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, **kwargs: SimpleNamespace(siblings=files))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, name, **kw: str(released_folder / name))
    snapshot = released_folder.parent / "snapshot"
    shutil.copytree(released_folder, snapshot, ignore=shutil.ignore_patterns("RANDOM_WEIGHTS.txt"), dirs_exist_ok=True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: str(snapshot))
    resolved = cache_module.resolve_model("AIDC-AI/Ovis-U1-3B")
    assert resolved == cache_module.ResolvedModel(str(cache / "converted" / "AIDC-AI--Ovis-U1-3B"), "pipeline")
    assert "converting it once" in capsys.readouterr().err
    summary = (Path(resolved.path) / "README.md").read_text()
    assert "base_model: AIDC-AI/Ovis-U1-3B" in summary

    def offline(*args, **kwargs):
        raise AssertionError("the Hub was asked again")

    monkeypatch.setattr(HfApi, "model_info", offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    main(["chat", "hello", "--max-new-tokens", "2"])  # the default --model: AIDC-AI/Ovis-U1-3B
    assert "converting" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "error, message",
    [
        (ConnectionError("[Errno -2] Name or service not known"), "the Hugging Face Hub cannot be reached"),
        ("not found", "no such repo on the Hub"),
    ],
)
def test_a_model_that_cannot_be_downloaded_gets_one_clear_message(cache, monkeypatch, capsys, error, message):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    def model_info(self, repo_id, **kwargs):
        response = SimpleNamespace(headers={}, request=None)
        raise RepositoryNotFoundError("404", response=response) if error == "not found" else error

    monkeypatch.setattr(HfApi, "model_info", model_info)
    assert main(["chat", "hello", "--model", "someone/missing"]) == 1
    text = capsys.readouterr().err.rstrip("\n")
    assert text.startswith("ovis-u1 chat: error: Cannot download someone/missing: " + message)
    assert text.endswith("run `ovis-u1 demo` (a small random model).")


def test_offline_without_the_model_exits_with_a_message_not_a_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OVIS_U1_CACHE": str(tmp_path)}
    command = [sys.executable, "-m", "ovis_u1_hf.cli", "generate", "a cat", "--model", "some/missing-repo"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert (
        "ovis-u1 generate: error: Cannot download some/missing-repo: HF_HUB_OFFLINE is set and it is not in the local "
        "Hugging Face cache.\nTo try ovis-u1 without downloading anything, run `ovis-u1 demo`" in done.stderr
    )


def test_app_serves_the_loaded_pipeline(folder, monkeypatch):
    import ovis_u1_hf.app

    calls = []
    monkeypatch.setattr(ovis_u1_hf.app, "launch", lambda pipe, **kwargs: calls.append((pipe, kwargs)))
    assert main(["app", "--model", str(folder), "--port", "7999", "--host", "0.0.0.0", "--share"]) == 0
    ((pipe, kwargs),) = calls
    assert type(pipe).__name__ == "OvisU1TextToImagePipeline"
    assert kwargs == {"host": "0.0.0.0", "port": 7999, "share": True, "max_file_size": "20MB"}


def test_app_without_gradio_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["app", "--model", "does-not-exist"]) == 2
    assert capsys.readouterr().err.startswith('ovis-u1 app: error: The Ovis-U1 app needs Gradio: pip install "ovis-u1-hf[demo]"')


@pytest.mark.usefixtures("keep_active_attention_backend")
def test_attn_chooses_the_kernels_of_the_language_model_and_the_transformer(folder):
    from ovis_u1_hf import cli
    from ovis_u1_hf.pipelines.pipeline_ovis_u1 import attention_backend

    args = SimpleNamespace(attn="eager", offload=False)
    pipe = cli.load_pipeline(args, OvisU1TextToImagePipeline, torch.device("cpu"), torch.float32, folder)
    assert pipe.text_encoder.config._attn_implementation == "eager"
    assert attention_backend(pipe.transformer) == "_native_math"

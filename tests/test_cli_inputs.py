"""Bad inputs at the `ovis-u1` command line: one line naming the problem and the fix, exit status 2, before any model
loads, and nothing left on disk."""

import json
import math
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel

import ovis_u1_hf.conversion
from ovis_u1_hf import OvisU1EditPipeline, OvisU1TextToImagePipeline
from ovis_u1_hf.cli import main
from tiny_pipelines import tiny_text_to_image_pipeline


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    tiny_text_to_image_pipeline().save_pretrained(path)
    return path


@pytest.fixture
def loads(monkeypatch):
    """Every model load or conversion the command attempts, recorded (and refused)."""
    calls = []

    def refuse(name):
        def load(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} ran")

        return load

    for cls in (OvisU1TextToImagePipeline, OvisU1EditPipeline, AutoModel):
        monkeypatch.setattr(cls, "from_pretrained", refuse(cls.__name__))
    monkeypatch.setattr(ovis_u1_hf.conversion, "convert", refuse("convert"))
    return calls


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working folder with a few input files; the test checks that nothing is added to it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OVIS_U1_CACHE", str(tmp_path / "cache"))
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "big.png").read_bytes()[:2000])
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "photos").mkdir()
    (tmp_path / "album.png").mkdir()
    return tmp_path


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def run(argv, capsys):
    """Exit status and stderr of `ovis-u1 argv`, argparse's own exits included."""
    try:
        status = main(argv)
    except SystemExit as exit:
        status = exit.code
    return status, capsys.readouterr().err


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
NO_FLASH = pytest.mark.skipif(
    __import__("transformers.utils", fromlist=["x"]).is_flash_attn_2_available(), reason="flash-attn is installed"
)

CASES = [
    # image files
    (["edit", "missing.png", "make it blue"], "The image missing.png does not exist: check the path."),
    (["edit", "photos", "make it blue"], "The image photos is a folder: give an image file."),
    (
        ["chat", "what is it?", "--image", "notes.png"],
        "--image notes.png is not an image file PIL can read: give a PNG, JPEG, WebP, ... file.",
    ),
    (
        ["edit", "truncated.png", "make it blue"],
        "The image truncated.png is truncated or damaged (image file is truncated): save or "
        "download it again.",
    ),
    # prompts
    (["generate", ""], "The prompt is empty: describe the image to generate."),
    (["generate", "  \n "], "The prompt is empty: describe the image to generate."),
    (["edit", "ok.png", " "], "The instruction is empty: describe the edit to make."),
    (["chat", "\t"], "The question is empty: type what to ask."),
    # numbers (argparse)
    (["generate", "a cat", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["generate", "a cat", "--count", "-2"], "argument --count: must be at least 1, got -2"),
    (["generate", "a cat", "--steps", "two"], "argument --steps: invalid positive_int value: 'two'"),
    (["generate", "a cat", "--guidance", "nan"], "argument --guidance: must be a finite number >= 0, got nan"),
    (["generate", "a cat", "--guidance", "inf"], "argument --guidance: must be a finite number >= 0, got inf"),
    (["edit", "ok.png", "x", "--image-guidance", "-1"], "argument --image-guidance: must be a finite number >= 0, got -1"),
    (["chat", "hi", "--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1, got 0"),
    (["app", "--port", "70000"], "argument --port: must be between 1 and 65535, got 70000"),
    # device and attention
    (["generate", "a cat", "--device", "banana"], "--device banana is not a device torch knows: use cpu, cuda, cuda:1, mps, ..."),
    pytest.param(
        ["generate", "a cat", "--device", "cuda"],
        "--device cuda: no cuda device is available here: use --device cpu.",
        marks=NO_CUDA,
    ),
    (
        ["generate", "a cat", "--device", "cpu", "--offload"],
        "--offload keeps models on the CPU until they run on a GPU: drop it, or use --device cuda.",
    ),
    pytest.param(
        ["chat", "hi", "--device", "cpu", "--attn", "flash_attention_2"],
        '--attn flash_attention_2 needs flash-attn and a CUDA GPU (pip install "ovis-u1-hf[flash]"): use --attn sdpa '
        "instead.",
        marks=NO_FLASH,
    ),
    # output paths, checked before generating
    (
        ["generate", "a cat", "--output", "nowhere/cat.png"],
        "the folder of --output nowhere does not exist: create it first or choose another path.",
    ),
    (
        ["generate", "a cat", "--output", "cat.xyz"],
        "cannot write images as .xyz (cat.xyz): end the name with .png, .jpg, .webp or another extension PIL saves.",
    ),
    (["edit", "ok.png", "x", "--output", "album.png"], "--output album.png is a folder: give a file name such as album.png/image.png."),
    (
        ["generate", "a cat", "--output", "/proc/cat.png"],
        "the folder of --output /proc is not writable (No such file or directory): choose another path.",
    ),
    # demo folders
    (["demo", "--output", "ok.png"], "--output ok.png: ok.png is a file, not a folder: choose another path."),
]


@pytest.mark.parametrize("argv, message", CASES, ids=lambda value: None)
def test_a_bad_input_gets_one_line_and_status_2_before_anything_loads(argv, message, folder, work, loads, capsys):
    before = tree(work)
    has_model = argv[0] in ("chat", "generate", "edit", "app")
    status, err = run([*argv, "--model", str(folder)] if has_model else argv, capsys)
    assert status == 2
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"ovis-u1 {argv[0]}: error: ")
    assert last == f"ovis-u1 {argv[0]}: error: {message}"
    if "argument" not in (message or ""):  # argparse prints its usage line first; ours print one line only
        assert err.count("\n") == 1
    assert "Traceback" not in err
    assert loads == []
    assert tree(work) == before


@pytest.mark.parametrize("pixels, kind", [(40 * 40 - 1, "warning"), (40 * 40 // 2 - 1, "error")])
def test_a_decompression_bomb_is_refused(pixels, kind, folder, work, loads, capsys, monkeypatch):
    # PIL warns above MAX_IMAGE_PIXELS and raises above twice that: both are refused.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)
    status, err = run(["edit", "ok.png", "make it blue", "--model", str(folder)], capsys)
    assert status == 2
    assert err.startswith("ovis-u1 edit: error: The image ok.png is too large to open safely (Image size (1600 pixels)")
    assert err.endswith("could be decompression bomb DOS attack.): resize it first.\n")
    assert loads == []


def test_the_port_in_use_is_refused_before_loading(folder, work, loads, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, err = run(["app", "--model", str(folder), "--port", str(port)], capsys)
    assert status == 2
    assert err == (
        f"ovis-u1 app: error: cannot listen on 127.0.0.1:{port} (Address already in use): another program uses the "
        "port, or the address is not this machine's; choose another --port or --host.\n"
    )
    assert loads == []


def test_a_cache_that_is_a_file_is_refused_and_nothing_is_created(work, loads, capsys, monkeypatch):
    (work / "cache-file").write_text("")
    monkeypatch.setenv("OVIS_U1_CACHE", str(work / "cache-file"))
    before = tree(work)
    status, err = run(["demo", "--output", "out"], capsys)
    assert status == 2
    assert err == (
        f"ovis-u1 demo: error: $OVIS_U1_CACHE (set OVIS_U1_CACHE to change it): {work / 'cache-file'}: "
        f"{work / 'cache-file'} is a file, not a folder: choose another path.\n"
    )
    assert tree(work) == before and loads == []


# ------------------------------------------------------------------- what --model names --------------------------


def model_folder(path, config=None, index=None):
    path.mkdir()
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    if index is not None:
        (path / "model_index.json").write_text(json.dumps(index))
    return path


def test_a_folder_that_needs_its_own_code_is_refused(work, loads, capsys):
    config = {"model_type": "llava_custom", "auto_map": {"AutoModel": "modeling_llava_custom.LlavaCustomModel"}}
    custom = model_folder(work / "custom", config)
    status, err = run(["chat", "hi", "--device", "cpu", "--model", str(custom)], capsys)
    assert status == 2
    assert err == (
        f"ovis-u1 chat: error: {custom} needs code of its own (modeling_llava_custom.py, of model type "
        "'llava_custom'), which ovis-u1 does not run. If you trust that code, load it in Python: "
        f"AutoModel.from_pretrained('{custom}', trust_remote_code=True).\n"
    )
    index = {"_class_name": ["my_pipeline", "MyPipeline"], "unet": ["my_unet", "MyUNet"]}
    pipeline = model_folder(work / "custom-pipeline", index=index)
    status, err = run(["generate", "a cat", "--device", "cpu", "--model", str(pipeline)], capsys)
    assert status == 2
    assert err == (
        f"ovis-u1 generate: error: {pipeline} needs code of its own (the pipeline MyPipeline), which ovis-u1 does not "
        f"run. If you trust that code, load it in Python: DiffusionPipeline.from_pretrained('{pipeline}', "
        "trust_remote_code=True).\n"
    )
    assert loads == []


def test_other_models_and_a_released_config_without_llm_config_are_named(work, loads, capsys):
    other = model_folder(work / "bert", {"model_type": "bert"})
    status, err = run(["chat", "hi", "--device", "cpu", "--model", str(other)], capsys)
    assert (status, err) == (2, f"ovis-u1 chat: error: {other} is not an Ovis-U1 model (its model type is 'bert').\n")
    released = model_folder(work / "released", {"model_type": "ovis_u1", "architectures": ["OvisU1"]})
    status, err = run(["generate", "a cat", "--device", "cpu", "--model", str(released)], capsys)
    assert status == 2
    assert err == (
        f"ovis-u1 generate: error: {released} is a released Ovis-U1 checkpoint whose config.json lacks llm_config: "
        "download it again.\n"
    )
    assert "understanding model" not in err and loads == []


def test_a_truncated_weights_file_is_named(folder, work, loads, capsys):
    damaged = work / "damaged"
    shutil.copytree(folder, damaged)
    weights = damaged / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    status, err = run(["generate", "a cat", "--device", "cpu", "--model", str(damaged)], capsys)
    assert status == 2
    assert err == (
        f"ovis-u1 generate: error: The weights file {weights} is truncated or damaged (Error while deserializing "
        "header: incomplete metadata, file not fully covered): download or convert it again.\n"
    )
    assert loads == []


# ------------------------------------------------------------------- failures while running ---------------------


@pytest.fixture
def failing_pipeline(monkeypatch):
    def fail(self, *args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(OvisU1TextToImagePipeline, "__call__", fail)


def test_a_failure_while_running_is_one_line_with_status_1(folder, work, capsys, failing_pipeline, monkeypatch):
    monkeypatch.delenv("OVIS_U1_DEBUG", raising=False)
    status, err = run(["generate", "a cat", "--model", str(folder), "--device", "cpu"], capsys)
    assert status == 1
    assert err.splitlines()[-1] == "ovis-u1 generate: error: RuntimeError: out of memory (--debug shows the traceback)"
    assert "Traceback" not in err
    assert not (work / "image.png").exists()


@pytest.mark.parametrize("switch", ["--debug", "OVIS_U1_DEBUG=1"])
def test_debug_shows_the_traceback(switch, folder, work, capsys, failing_pipeline, monkeypatch):
    argv = ["generate", "a cat", "--model", str(folder), "--device", "cpu"]
    if switch == "--debug":
        argv.append(switch)
    else:
        monkeypatch.setenv(*switch.split("="))
    with pytest.raises(RuntimeError, match="out of memory"):  # the console script prints it with its traceback
        main(argv)


def test_an_interrupted_save_leaves_no_partial_image(folder, work, capsys, monkeypatch):
    def interrupted(self, fp, format=None, **params):
        fp.write(b"\x89PNG partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    argv = ["generate", "a cat", "--model", str(folder), "--height", "32", "--width", "32", "--steps", "1"]
    before = tree(work)
    status, err = run([*argv, "--output", "cat.png"], capsys)
    assert status == 130 and err.endswith("\novis-u1 generate: interrupted\n")
    assert tree(work) == before


# ------------------------------------------------------------------- help and version ----------------------------


def test_help_lists_every_option_with_its_default(capsys):
    from ovis_u1_cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert sorted(commands) == ["app", "batch", "chat", "convert", "demo", "edit", "generate"]
    tasks = commands.pop("batch")._subparsers._group_actions[0].choices
    assert sorted(tasks) == ["chat", "edit", "generate"]
    commands.update({f"batch {name}": task for name, task in tasks.items()})
    for name, command in commands.items():
        text = command.format_help()
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help"
                shown = "(default:" in action.help or action.default is not None or action.required
                assert shown, f"{name} {action.option_strings[0]} shows no default"
        assert "--steps STEPS         denoising steps (default: 50)" in text or not name.endswith("generate")
        assert "(default: AIDC-AI/Ovis-U1-3B)" in " ".join(text.split()) or name in ("convert", "demo")


def test_version(capsys):
    from ovis_u1_cli import version

    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"ovis-u1 {version()}\n" and version() == "0.1.0"


def test_help_imports_no_torch_and_answers_fast():
    code = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from ovis_u1_cli import main\n"
        "for argv in (['--help'], ['generate', '--help'], ['--version']):\n"
        "    try: main(argv)\n"
        "    except SystemExit: pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'diffusers', 'PIL', 'ovis_u1_hf') if m in sys.modules)\n"
        "print('LOADED', heavy, time.perf_counter() - start)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    line = done.stdout.splitlines()[-1].split(" ", 1)[1]
    loaded, seconds = line.rsplit(" ", 1)
    assert loaded == "[]"
    assert float(seconds) < 0.5 and not math.isnan(float(seconds))

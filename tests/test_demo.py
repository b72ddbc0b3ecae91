"""`ovis-u1 demo`: the whole program on a random checkpoint built offline, once, into the cache."""

import socket

import numpy as np
import pytest
from PIL import Image

import ovis_u1_hf.demo
from ovis_u1_hf.cli import main
from ovis_u1_hf.demo import IMAGE_SIZE, run_demo


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: the demo must run with no network at all."""

    def refuse(*args, **kwargs):
        raise AssertionError("the demo tried to reach the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_demo_runs_everything_offline_and_builds_its_checkpoint_once(tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.setenv("OVIS_U1_CACHE", str(tmp_path / "cache"))
    builds = []
    build_released = ovis_u1_hf.demo.build_released

    def counted(*args, **kwargs):
        builds.append(args)
        return build_released(*args, **kwargs)

    monkeypatch.setattr(ovis_u1_hf.demo, "build_released", counted)

    first = tmp_path / "first"
    assert main(["demo", "--output", str(first)]) == 0
    printed = capsys.readouterr().out
    assert "The weights are RANDOM" in printed and "built and converted" in printed
    assert len(builds) == 1
    names = {"input.png", "text-to-image.png", "edited.png", "report.md"}
    assert {path.name for path in first.iterdir()} == names
    for name in ("input.png", "text-to-image.png", "edited.png"):
        assert Image.open(first / name).size == (IMAGE_SIZE, IMAGE_SIZE)
    report = (first / "report.md").read_text()
    assert "The weights are RANDOM" in report and "images are noise" in report
    for word in ("chat", "text to image", "edit", "text-to-image.png", "edited.png", "256x256"):
        assert word in report
    checkpoint = tmp_path / "cache" / "demo"
    (version,) = checkpoint.iterdir()
    stamp = (version / "pipeline" / "model_index.json").stat().st_mtime_ns
    assert (version / "released" / "config.json").is_file()  # the released layout the converter read

    # The second run finds the checkpoint in the cache: nothing is built or converted, the outputs are the same.
    second = run_demo(tmp_path / "second")
    assert "found in the cache" in capsys.readouterr().out
    assert not second.checkpoint_built and len(builds) == 1
    assert (version / "pipeline" / "model_index.json").stat().st_mtime_ns == stamp
    for name in ("text-to-image.png", "edited.png"):
        assert np.array_equal(np.asarray(Image.open(first / name)), np.asarray(Image.open(second.images[name[:-4]])))
    assert second.answer in printed

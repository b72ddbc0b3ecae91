"""`ovis-u1 edit --height/--width` on a tiny saved pipeline folder."""

import numpy as np
import PIL.Image
import pytest

from ovis_u1_hf.cli import main
from tiny_pipelines import tiny_text_to_image_pipeline


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    tiny_text_to_image_pipeline().save_pretrained(path)
    return path


def test_cli_edit_height_and_width(folder, tmp_path):
    source = tmp_path / "in.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(source)
    output = tmp_path / "edited.png"
    args = ["edit", str(source), "make it blue", "--model", str(folder), "--steps", "1", "--output", str(output)]
    assert main([*args, "--height", "48", "--width", "80"]) == 0
    assert PIL.Image.open(output).size == (80, 48)
    assert main([*args, "--height", "48"]) == 2
    assert main([*args, "--height", "48", "--width", "4000"]) == 2

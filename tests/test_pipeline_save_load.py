"""Saved pipeline folders: loading with the package, and as remote code where the package is absent."""

import json

import numpy as np
from diffusers import DiffusionPipeline

from ovis_u1_hf import OvisU1EditPipeline, OvisU1ForConditionalGeneration, OvisU1TextToImagePipeline
from pipeline_calls import run
from remote_code import run_without_the_package, save_with_outputs
from tiny_pipelines import tiny_text_to_image_pipeline


def test_saved_folder_layout_and_package_loading(tmp_path):
    pipe = tiny_text_to_image_pipeline()
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_ovis_u1_text_to_image", "OvisU1TextToImagePipeline"]
    assert index["text_encoder"] == ["modeling_ovis_u1", "OvisU1ForConditionalGeneration"]
    assert index["processor"] == ["processing_ovis_u1", "OvisU1Processor"]
    assert index["transformer"] == ["transformer_ovis_u1", "OvisU1Transformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    for path in ["pipeline_ovis_u1_text_to_image.py", "pipeline_ovis_u1_edit.py", "pipeline_ovis_u1.py",
                 "text_encoder/modeling_ovis_u1.py", "text_encoder/configuration_ovis_u1.py",
                 "processor/processing_ovis_u1.py", "processor/image_processing_ovis_u1.py",
                 "transformer/transformer_ovis_u1.py"]:
        assert (tmp_path / path).is_file(), path

    expected_t2i = run(pipe, "t2i")
    loaded = OvisU1TextToImagePipeline.from_pretrained(tmp_path)
    assert type(loaded.text_encoder) is OvisU1ForConditionalGeneration  # the package's classes, no remote code
    assert np.array_equal(run(loaded, "t2i"), expected_t2i)

    edit = OvisU1EditPipeline.from_pretrained(tmp_path)
    assert np.array_equal(run(edit, "edit"), run(OvisU1EditPipeline.from_pipe(pipe), "edit"))

    remote = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(remote).__name__ == "OvisU1TextToImagePipeline"
    assert np.array_equal(run(remote, "t2i"), expected_t2i)


def test_remote_code_without_the_package(tmp_path):
    save_with_outputs(tmp_path)
    result = run_without_the_package(tmp_path)
    assert "Do you wish to run the custom code" not in result.stdout
    assert result.returncode == 0, result.stderr[-4000:]
    assert "remote ok" in result.stdout
    # Loading, `from_pipe` and `AutoModel` take the transformer's class as the pipelines were defined with.
    assert "Expected types" not in result.stderr
    assert "not switched over" not in result.stderr
    assert "OvisU1Transformer2DModel" not in result.stderr, result.stderr[-4000:]

"""Saved pipeline folders: loading with the package, and as remote code where the package is absent."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import torch
from diffusers import DiffusionPipeline

from ovis_u1_hf import OvisU1EditPipeline, OvisU1ForConditionalGeneration, OvisU1TextToImagePipeline
from pipeline_calls import run
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
    pipe = tiny_text_to_image_pipeline()
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    np.save(tmp_path / "t2i.npy", run(pipe, "t2i"))
    np.save(tmp_path / "edit.npy", run(OvisU1EditPipeline.from_pipe(pipe), "edit"))
    ids = pipe.processor(text="hello", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        np.save(tmp_path / "logits.npy", pipe.text_encoder(input_ids=ids).logits.numpy())
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["ovis_u1_hf"] = None  # the package cannot be imported in this process
        sys.path.insert(0, {str(__file__.rsplit("/", 1)[0])!r})
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        from transformers import AutoModel, AutoProcessor
        from pipeline_calls import run
        folder, out = {str(folder)!r}, {str(tmp_path)!r}
        t2i = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
        assert type(t2i).__module__.startswith("diffusers_modules"), type(t2i).__module__
        assert np.array_equal(run(t2i, "t2i"), np.load(out + "/t2i.npy"))
        edit = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True, custom_pipeline="pipeline_ovis_u1_edit")
        assert type(edit).__name__ == "OvisU1EditPipeline"
        assert np.array_equal(run(edit, "edit"), np.load(out + "/edit.npy"))
        model = AutoModel.from_pretrained(folder, subfolder="text_encoder", trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(folder, subfolder="processor", trust_remote_code=True)
        ids = processor(text="hello", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            assert np.array_equal(model(input_ids=ids).logits.numpy(), np.load(out + "/logits.npy"))
        print("remote ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "PATH": "", "HF_HOME": str(tmp_path / "hf_home")}, stdin=subprocess.DEVNULL,
    )
    assert "Do you wish to run the custom code" not in result.stdout
    assert result.returncode == 0, result.stderr[-4000:]
    assert "remote ok" in result.stdout

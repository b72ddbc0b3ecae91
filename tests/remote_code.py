"""A saved pipeline folder with its outputs, and the check that it runs as remote code without ovis_u1_hf.

`python tests/remote_code.py DIR` saves one: CI saves a folder with each transformers version it tests and checks it
with the other (`OVIS_U1_OTHER_VERSION_FOLDER`).
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np


TESTS = Path(__file__).resolve().parent


def save_with_outputs(folder: Path) -> None:
    import diffusers
    import transformers

    from ovis_u1_hf import OvisU1EditPipeline
    from pipeline_calls import all_outputs
    from tiny_pipelines import tiny_text_to_image_pipeline

    pipe = tiny_text_to_image_pipeline()
    pipe.save_pretrained(folder / "pipe")
    outputs = all_outputs(pipe, OvisU1EditPipeline.from_pipe(pipe), pipe.text_encoder, pipe.processor)
    np.savez(folder / "outputs.npz", **outputs)
    versions = {"transformers": transformers.__version__, "diffusers": diffusers.__version__}
    (folder / "versions.json").write_text(json.dumps(versions))


def run_without_the_package(folder: Path, atol: float = 0.0) -> subprocess.CompletedProcess:
    """Loads `folder/pipe` with `trust_remote_code=True` in a process where ovis_u1_hf cannot be imported, and
    compares every output with `folder/outputs.npz` (exactly, unless `atol` is given)."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["ovis_u1_hf"] = None  # the package cannot be imported in this process
        sys.path.insert(0, {str(TESTS)!r})
        import numpy as np
        from diffusers import DiffusionPipeline
        from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor
        from pipeline_calls import all_outputs
        folder = {str(folder / "pipe")!r}
        t2i = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
        assert type(t2i).__module__.startswith("diffusers_modules"), type(t2i).__module__
        edit = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True, custom_pipeline="pipeline_ovis_u1_edit")
        assert type(edit).__name__ == "OvisU1EditPipeline"
        model = AutoModel.from_pretrained(folder, subfolder="text_encoder", trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(folder, subfolder="processor", trust_remote_code=True)
        task_model = AutoModelForImageTextToText.from_pretrained(folder, subfolder="text_encoder", trust_remote_code=True)
        assert type(task_model) is type(model), (type(task_model), type(model))
        # One transformer class however many times diffusers loads its module: `from_pipe` shares every component.
        shared = type(edit).from_pipe(t2i)
        assert shared.transformer is t2i.transformer
        assert all(shared.components[name] is component for name, component in t2i.components.items())
        import diffusers, torch
        transformer = diffusers.AutoModel.from_pretrained(folder, subfolder="transformer", trust_remote_code=True)
        assert type(transformer) is type(t2i.transformer), (type(transformer), type(t2i.transformer))
        generator = torch.Generator().manual_seed(0)
        config = transformer.config
        inputs = dict(
            hidden_states=torch.randn(1, 4, config.in_channels, generator=generator),
            timestep=torch.tensor([0.5]),
            img_ids=torch.tensor([[0.0, row, col] for row in range(2) for col in range(2)]),
            encoder_hidden_states=torch.randn(1, 3, config.joint_attention_dim, generator=generator),
            return_dict=False,
        )
        with torch.no_grad():
            got, want = transformer(**inputs)[0], t2i.transformer(**inputs)[0]
        assert got.abs().sum() > 0
        assert torch.equal(got, want)
        expected = np.load({str(folder / "outputs.npz")!r})
        for name, value in all_outputs(t2i, edit, model, processor).items():
            if name == "tokens":
                np.testing.assert_array_equal(value, expected[name], err_msg=name)
            else:
                np.testing.assert_allclose(value, expected[name], rtol=0, atol={atol!r}, err_msg=name)
        print("remote ok")
        """
    )
    home = folder / "hf_home"
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=folder, stdin=subprocess.DEVNULL,
        env={"HF_HUB_OFFLINE": "1", "PATH": "", "HF_HOME": str(home)},
    )


if __name__ == "__main__":
    sys.path.insert(0, str(TESTS))
    save_with_outputs(Path(sys.argv[1]))

"""save_pretrained / from_pretrained round trips, Auto classes, remote code and device maps."""

import json
import subprocess
import sys
import textwrap

import torch
from transformers import AutoModel, AutoModelForImageTextToText

import ovis_u1_hf  # noqa: F401  (registers the Auto classes)
from ovis_u1_hf import OvisU1ForConditionalGeneration
from tiny_models import image_ids, tiny_model


def inputs_for(model):
    image_grid_thw = torch.tensor([[1, 4, 6], [1, 2, 2]])
    pixel_values = torch.randn(int(image_grid_thw.prod(-1).sum()), 588, generator=torch.Generator().manual_seed(0))
    input_ids = torch.tensor([[5, 6] + image_ids(6) + [7] + image_ids(1) + [8]])
    return dict(input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw)


def test_round_trip_and_auto_classes(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_ovis_u1.OvisU1ForConditionalGeneration"
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_ovis_u1.OvisU1ForConditionalGeneration"
    assert {"modeling_ovis_u1.py", "configuration_ovis_u1.py"} <= {p.name for p in tmp_path.iterdir()}

    inputs = inputs_for(model)
    with torch.no_grad():
        expected = model(**inputs).logits
        for cls in (OvisU1ForConditionalGeneration, AutoModel, AutoModelForImageTextToText):
            loaded = cls.from_pretrained(tmp_path)
            assert type(loaded) is OvisU1ForConditionalGeneration
            assert torch.equal(loaded(**inputs).logits, expected)


def test_untied_head_round_trip(tmp_path):
    model = tiny_model(text={"tie_word_embeddings": False}, tie_word_embeddings=False)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    model.save_pretrained(tmp_path)
    loaded = OvisU1ForConditionalGeneration.from_pretrained(tmp_path)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_remote_code_loads_without_the_package(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    inputs = inputs_for(model)
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        torch.save(model(**inputs).logits, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["ovis_u1_hf"] = None  # the package cannot be imported in this process
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            logits = model(**inputs).logits
        assert torch.equal(logits, torch.load({str(tmp_path / "expected.pt")!r}))
        print("remote ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": ""}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote ok" in result.stdout


def test_device_map_with_disk_offload(tmp_path):
    model = tiny_model(text={"num_hidden_layers": 3})
    model.save_pretrained(tmp_path / "model")
    inputs = inputs_for(model)
    device_map = {
        "model.vision_tower": "cpu",
        "model.visual_embeddings_table": "cpu",
        "model.language_model.embed_tokens": "cpu",
        "model.language_model.layers.0": "cpu",
        "model.language_model.layers.1": "disk",
        "model.language_model.layers.2": "disk",
        "model.language_model.norm": "cpu",
        "model.language_model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    offloaded = OvisU1ForConditionalGeneration.from_pretrained(
        tmp_path / "model", device_map=device_map, offload_folder=tmp_path / "offload"
    )
    assert any(p.device.type == "meta" for p in offloaded.model.language_model.layers[1].parameters())
    with torch.no_grad():
        torch.testing.assert_close(offloaded(**inputs).logits, model(**inputs).logits)
        greedy = dict(max_new_tokens=4, do_sample=False)
        assert offloaded.generate(**inputs, **greedy).tolist() == model.generate(**inputs, **greedy).tolist()

    auto = OvisU1ForConditionalGeneration.from_pretrained(tmp_path / "model", device_map="auto")
    with torch.no_grad():
        torch.testing.assert_close(auto(**inputs).logits, model(**inputs).logits)

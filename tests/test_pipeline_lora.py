"""LoRA on the Ovis-U1 pipelines through diffusers' loader machinery, in the shape of diffusers' tests/lora/utils.py."""

import numpy as np
import pytest
import torch
from packaging.version import Version

from ovis_u1_hf.pipelines import OvisU1EditPipeline
from pipeline_calls import T2I, run
from tiny_pipelines import tiny_text_to_image_pipeline


peft = pytest.importorskip("peft")
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402


# transformers' PEFT integration (used for the language model's adapters) asks for a newer peft than diffusers'.
try:
    from transformers.integrations.peft import MIN_PEFT_VERSION as TRANSFORMERS_MIN_PEFT
except ImportError:  # older transformers name no minimum
    TRANSFORMERS_MIN_PEFT = "0"
text_encoder_peft = pytest.mark.skipif(
    Version(peft.__version__) < Version(TRANSFORMERS_MIN_PEFT),
    reason=f"transformers' PEFT integration needs peft >= {TRANSFORMERS_MIN_PEFT}",
)

TRANSFORMER_CONFIG = dict(
    r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj"], init_lora_weights=False
)
TEXT_ENCODER_CONFIG = dict(
    r=4, lora_alpha=4, target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)", init_lora_weights=False
)


def add_adapters(pipe, text_encoder=False, seed=0, adapter_name="default"):
    """Random (non-zero) LoRA layers, as diffusers' tests add them; returns their configs."""
    torch.manual_seed(seed)
    configs = {"transformer": LoraConfig(**TRANSFORMER_CONFIG)}
    pipe.transformer.add_adapter(configs["transformer"], adapter_name=adapter_name)
    if text_encoder:
        configs["text_encoder"] = LoraConfig(**TEXT_ENCODER_CONFIG)
        pipe.text_encoder.add_adapter(configs["text_encoder"], adapter_name=adapter_name)
    return configs


def save_adapters(pipe, folder, configs, adapter_name="default"):
    layers = {
        f"{name}_lora_layers": get_peft_model_state_dict(getattr(pipe, name), adapter_name=adapter_name)
        for name in configs
    }
    metadata = {f"{name}_lora_adapter_metadata": config.to_dict() for name, config in configs.items()}
    pipe.save_lora_weights(folder, **layers, **metadata)


@pytest.fixture(scope="module")
def base_output():
    return run(tiny_text_to_image_pipeline(), "t2i")


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory):
    """A LoRA file of the transformer, and its output."""
    folder = tmp_path_factory.mktemp("lora")
    pipe = tiny_text_to_image_pipeline()
    save_adapters(pipe, folder, add_adapters(pipe))
    return folder, run(pipe, "t2i")


def test_lora_changes_the_output(base_output, lora_folder):
    _, lora_output = lora_folder
    assert np.abs(lora_output - base_output).max() > 1e-3


def test_saved_lora_loads_into_a_fresh_pipeline(lora_folder):
    folder, lora_output = lora_folder
    assert [p.name for p in folder.iterdir()] == ["pytorch_lora_weights.safetensors"]
    for source in (folder, folder / "pytorch_lora_weights.safetensors"):
        pipe = tiny_text_to_image_pipeline()
        if source.is_file():
            pipe.load_lora_weights(source.parent, weight_name=source.name, adapter_name="style")
        else:
            pipe.load_lora_weights(source, adapter_name="style")
        assert pipe.get_active_adapters() == ["style"]
        assert pipe.get_list_adapters() == {"transformer": ["style"]}
        np.testing.assert_array_equal(run(pipe, "t2i"), lora_output)


def test_state_dict_loads_and_edit_pipeline_has_the_mixin(lora_folder):
    folder, lora_output = lora_folder
    pipe = tiny_text_to_image_pipeline()
    state_dict = pipe.lora_state_dict(folder)
    assert state_dict and all(key.startswith("transformer.") and "lora" in key for key in state_dict)
    pipe.load_lora_weights(state_dict)
    np.testing.assert_array_equal(run(pipe, "t2i"), lora_output)
    edit = OvisU1EditPipeline.from_pipe(pipe)  # shares the transformer, adapters included
    plain_edit = OvisU1EditPipeline.from_pipe(tiny_text_to_image_pipeline())
    assert np.abs(run(edit, "edit") - run(plain_edit, "edit")).max() > 1e-3
    edit.unload_lora_weights()
    np.testing.assert_array_equal(run(edit, "edit"), run(plain_edit, "edit"))


def test_fused_lora_equals_unfused(base_output, lora_folder):
    folder, lora_output = lora_folder
    pipe = tiny_text_to_image_pipeline()
    pipe.load_lora_weights(folder, adapter_name="style")
    pipe.fuse_lora(components=["transformer"])
    assert pipe.num_fused_loras == 1
    fused = run(pipe, "t2i")
    np.testing.assert_allclose(fused, lora_output, rtol=0, atol=1e-5)
    pipe.unfuse_lora(components=["transformer"])
    assert pipe.num_fused_loras == 0
    np.testing.assert_allclose(run(pipe, "t2i"), lora_output, rtol=0, atol=1e-5)
    pipe.disable_lora()
    np.testing.assert_allclose(run(pipe, "t2i"), base_output, rtol=0, atol=1e-5)


def test_unload_restores_the_base_output_exactly(base_output, lora_folder):
    folder, _ = lora_folder
    pipe = tiny_text_to_image_pipeline()
    pipe.load_lora_weights(folder)
    pipe.unload_lora_weights()
    assert pipe.get_list_adapters() == {}
    np.testing.assert_array_equal(run(pipe, "t2i"), base_output)


def test_set_adapters_weights(base_output, lora_folder, tmp_path):
    folder, lora_output = lora_folder
    pipe = tiny_text_to_image_pipeline()
    pipe.load_lora_weights(folder, adapter_name="a")
    other = tiny_text_to_image_pipeline()
    save_adapters(other, tmp_path, add_adapters(other, seed=1))
    b_output = run(other, "t2i")
    pipe.load_lora_weights(tmp_path, adapter_name="b")
    assert pipe.get_list_adapters() == {"transformer": ["a", "b"]}

    pipe.set_adapters("a", 0.0)
    np.testing.assert_array_equal(run(pipe, "t2i"), base_output)
    pipe.set_adapters("a", 1.0)
    np.testing.assert_array_equal(run(pipe, "t2i"), lora_output)
    pipe.set_adapters("b")
    assert pipe.get_active_adapters() == ["b"]
    np.testing.assert_array_equal(run(pipe, "t2i"), b_output)
    pipe.set_adapters("a", 0.5)
    half = run(pipe, "t2i")
    assert np.abs(half - base_output).max() > 1e-4 and np.abs(half - lora_output).max() > 1e-4
    # Both at once differ from each alone; weights 0 and 0 are the base model.
    pipe.set_adapters(["a", "b"], [1.0, 1.0])
    both = run(pipe, "t2i")
    assert np.abs(both - lora_output).max() > 1e-4 and np.abs(both - b_output).max() > 1e-4
    pipe.set_adapters(["a", "b"], [0.0, 0.0])
    np.testing.assert_array_equal(run(pipe, "t2i"), base_output)
    pipe.delete_adapters("a")
    assert pipe.get_list_adapters() == {"transformer": ["b"]}


def test_attention_kwargs_scale_weighs_the_lora(base_output, lora_folder):
    folder, lora_output = lora_folder
    pipe = tiny_text_to_image_pipeline()
    pipe.load_lora_weights(folder)
    zero = pipe(generator=torch.Generator().manual_seed(0), attention_kwargs={"scale": 0.0}, **T2I).images
    np.testing.assert_array_equal(zero, base_output)
    half = pipe(generator=torch.Generator().manual_seed(0), attention_kwargs={"scale": 0.5}, **T2I).images
    pipe.set_adapters("default_0", 0.5)
    np.testing.assert_allclose(half, run(pipe, "t2i"), rtol=0, atol=1e-6)
    # The scale applies to one call only.
    pipe.set_adapters("default_0", 1.0)
    np.testing.assert_array_equal(run(pipe, "t2i"), lora_output)


def test_invalid_lora_files_are_rejected(tmp_path):
    pipe = tiny_text_to_image_pipeline()
    with pytest.raises(ValueError, match="lora"):
        pipe.load_lora_weights({"transformer.x_embedder.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="must start with"):
        pipe.load_lora_weights({"unet.a.lora_A.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="transformer_lora_layers"):
        pipe.save_lora_weights(tmp_path)


@text_encoder_peft
def test_text_encoder_lora_round_trip(base_output, tmp_path):
    pipe = tiny_text_to_image_pipeline()
    configs = add_adapters(pipe, text_encoder=True)
    lora_output = run(pipe, "t2i")
    save_adapters(pipe, tmp_path, configs)

    fresh = tiny_text_to_image_pipeline()
    fresh.load_lora_weights(tmp_path, adapter_name="both")
    assert fresh.get_list_adapters() == {"transformer": ["both"], "text_encoder": ["both"]}
    np.testing.assert_array_equal(run(fresh, "t2i"), lora_output)
    fresh.set_adapters("both", {"transformer": 1.0, "text_encoder": 0.0})
    text_off = run(fresh, "t2i")
    assert np.abs(text_off - lora_output).max() > 1e-4
    fresh.set_adapters("both", 1.0)
    fresh.fuse_lora()
    np.testing.assert_allclose(run(fresh, "t2i"), lora_output, rtol=0, atol=1e-5)
    fresh.unfuse_lora()
    fresh.unload_lora_weights()
    np.testing.assert_allclose(run(fresh, "t2i"), base_output, rtol=0, atol=1e-5)


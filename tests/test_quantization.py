"""Weight-only quantization with torchao, loaded as diffusers and transformers load it: a `PipelineQuantizationConfig`
mapping the transformer to diffusers' `TorchAoConfig` and the language model to transformers' `TorchAoConfig`.

torchao prints notices on import on machines without its CUDA kernels, so the suite's main run goes without it and
these tests skip; OVIS_U1_REQUIRE_TORCHAO=1 (set where CI installs the `quant` extra) makes them fail instead."""

import os

import numpy as np
import pytest
import torch

from ovis_u1_hf.pipelines import OvisU1EditPipeline, OvisU1TextToImagePipeline
from pipeline_calls import run
from tiny_pipelines import tiny_text_to_image_pipeline


def require_torchao():
    try:
        import torchao  # noqa: F401
    except ImportError:
        reason = 'the quantization tests need torchao (pip install "ovis-u1-hf[quant]")'
        if os.environ.get("OVIS_U1_REQUIRE_TORCHAO") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    require_torchao()
    path = tmp_path_factory.mktemp("pipeline")
    tiny_text_to_image_pipeline().save_pretrained(path)
    return path


def int8_config():
    from diffusers import PipelineQuantizationConfig
    from diffusers import TorchAoConfig as DiffusersTorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig as TransformersTorchAoConfig

    return PipelineQuantizationConfig(
        quant_mapping={
            "transformer": DiffusersTorchAoConfig(Int8WeightOnlyConfig()),
            "text_encoder": TransformersTorchAoConfig(Int8WeightOnlyConfig()),
        }
    )


def load(folder, dtype=torch.float32, quantized=True):
    kwargs = {"quantization_config": int8_config()} if quantized else {}
    pipe = OvisU1TextToImagePipeline.from_pretrained(folder, dtype=dtype, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt="a red cube"):
    return pipe(prompt, height=64, width=64, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                output_type="np").images  # fmt: skip


def int8_weight(module: torch.nn.Module) -> bool:
    from torchao.utils import TorchAOBaseTensor

    weight = module.weight
    return isinstance(weight, TorchAOBaseTensor) and weight.qdata.dtype == torch.int8


def test_decoder_and_language_model_linear_weights_are_int8(folder):
    pipe = load(folder)
    assert pipe.transformer.is_quantized and pipe.text_encoder.is_quantized
    blocks = [*pipe.transformer.transformer_blocks, *pipe.transformer.single_transformer_blocks]
    for model in (*blocks, pipe.transformer.refiner, pipe.text_encoder.model.language_model):
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(int8_weight(m) for m in linears)
    assert pipe.vae.dtype == torch.float32 and not getattr(pipe.vae, "is_quantized", False)


def test_quantized_images_stay_close_to_float32(folder):
    reference = generate(load(folder, quantized=False))
    pipe = load(folder)
    images = generate(pipe)
    deviation = np.abs(images - reference).max()
    assert 0 < deviation < 0.05  # int8 rounding of the weights, nothing else
    # The conditions are kept for the next call as with float weights, and reused bit for bit.
    assert pipe.condition_cache.entries
    assert np.array_equal(generate(pipe), images)


def test_from_pipe_shares_the_quantized_models(folder):
    pipe = load(folder)
    edit = OvisU1EditPipeline.from_pipe(pipe)  # no dtype: float32, which the quantized models already compute in
    assert edit.transformer is pipe.transformer and edit.text_encoder is pipe.text_encoder
    reference = run(OvisU1EditPipeline.from_pipe(load(folder, quantized=False)), "edit")
    assert 0 < np.abs(run(edit, "edit") - reference).max() < 0.05


def test_casting_a_quantized_pipeline_is_refused(folder):
    pipe = load(folder, dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    with pytest.raises(ValueError, match="Casting a quantized model"):
        OvisU1EditPipeline.from_pipe(pipe)  # diffusers' from_pipe casts to float32 unless told otherwise
    edit = OvisU1EditPipeline.from_pipe(pipe, dtype=torch.bfloat16)
    assert edit.transformer is pipe.transformer and edit.vae.dtype == torch.float32
    assert run(edit, "edit").shape[-1] == 3


def test_quantized_language_model_chats(folder):
    reference, pipe = load(folder, quantized=False), load(folder)
    inputs = pipe.processor.encode_chat(
        [{"role": "user", "content": [{"type": "text", "text": "Describe a red cube."}]}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    options = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    expected = reference.text_encoder.generate(**inputs, **options)
    out = pipe.text_encoder.generate(**inputs, **options)
    assert out.sequences.shape == expected.sequences.shape
    first, first_expected = out.logits[0], expected.logits[0]
    assert not torch.equal(first, first_expected)
    torch.testing.assert_close(first, first_expected, atol=0.05 * first_expected.abs().max().item(), rtol=0)

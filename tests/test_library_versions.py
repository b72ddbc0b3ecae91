"""Contracts with the installed transformers that change between the versions pyproject allows."""

import dataclasses
import inspect
import json
import os
from pathlib import Path

import pytest
import torch
from transformers.cache_utils import Cache
from transformers.models.qwen3.modeling_qwen3 import Qwen3Model

from ovis_u1_hf.modeling.modeling_ovis_u1 import (
    OvisU1CausalLMOutputWithPast,
    OvisU1ForConditionalGeneration,
    OvisU1Model,
    OvisU1ModelOutputWithPast,
)
from remote_code import run_without_the_package
from tiny_models import image_ids, tiny_model


# transformers 5.24 renamed `past_key_values` (and `cache_params`) to `cache`, in forwards and in outputs.
CACHE_NAMES = {"cache", "past_key_values", "cache_params"}
INSTALLED_CACHE_NAME = "cache" if "cache" in inspect.signature(Qwen3Model.forward).parameters else "past_key_values"


def test_forwards_name_no_cache_argument_the_installed_transformers_does_not_accept():
    for cls in (OvisU1Model, OvisU1ForConditionalGeneration):
        named = CACHE_NAMES & inspect.signature(cls.forward).parameters.keys()
        assert named <= {INSTALLED_CACHE_NAME}, f"{cls.__name__}.forward names {named}"


def test_outputs_hold_the_cache_under_the_installed_name_only():
    for cls in (OvisU1ModelOutputWithPast, OvisU1CausalLMOutputWithPast):
        fields = {field.name for field in dataclasses.fields(cls)}
        assert fields & CACHE_NAMES == {INSTALLED_CACHE_NAME}, cls.__name__


def test_the_cache_goes_in_and_comes_out_under_the_installed_name():
    model = tiny_model()
    ids = torch.tensor([[5] + image_ids(4) + [6, 7, 8]])
    pixel_values = torch.randn(16, 588, generator=torch.Generator().manual_seed(0))
    images = dict(pixel_values=pixel_values, image_grid_thw=torch.tensor([[1, 4, 4]]))
    with torch.no_grad():
        full = model(input_ids=ids, **images).logits
        for module in (model, model.model):
            prefix = module(input_ids=ids[:, :-1], **images, use_cache=True)
            cache = prefix[INSTALLED_CACHE_NAME]
            assert isinstance(cache, Cache) and cache.get_seq_length() == ids.shape[1] - 1
            step = module(input_ids=ids[:, -1:], use_cache=True, **{INSTALLED_CACHE_NAME: cache})
            assert step[INSTALLED_CACHE_NAME] is cache and cache.get_seq_length() == ids.shape[1]
        torch.testing.assert_close(model.lm_head(step.last_hidden_state)[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(
    not os.environ.get("OVIS_U1_OTHER_VERSION_FOLDER"),
    reason="needs OVIS_U1_OTHER_VERSION_FOLDER: a folder saved by `python tests/remote_code.py DIR` in another "
    "environment (CI saves one with each transformers version it tests)",
)
def test_a_folder_saved_with_another_version_runs_as_remote_code():
    folder = Path(os.environ["OVIS_U1_OTHER_VERSION_FOLDER"])
    saved_with = json.loads((folder / "versions.json").read_text())
    # Same math, same torch: only the libraries' kernels may differ between their versions, by float rounding.
    result = run_without_the_package(folder, atol=1e-5)
    assert result.returncode == 0, f"saved with {saved_with}:\n{result.stderr[-4000:]}"
    assert "remote ok" in result.stdout

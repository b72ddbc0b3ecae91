"""Contracts every in-library transformers model keeps (tuple outputs, Trainer loss arguments, config writes), in the
shape of transformers' model tests: a tiny config and inputs builder, then one test per contract."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import CompileConfig

from ovis_u1_hf.modeling.modeling_ovis_u1 import OvisU1ForConditionalGeneration, OvisU1Model
from tiny_models import image_ids, tiny_config, tiny_model


class OvisU1ModelTester:
    """Builds a tiny config and a batch of two left-padded prompts, one with two images, with labels."""

    batch_size = 2

    def __init__(self, seed: int = 0):
        self.seed = seed

    def get_config(self):
        return tiny_config()

    def prepare_inputs(self):
        generator = torch.Generator().manual_seed(self.seed)
        image_grid_thw = torch.tensor([[1, 4, 4], [1, 2, 4]])
        pixel_values = torch.randn(int(image_grid_thw.prod(-1).sum()), 3 * 14 * 14, generator=generator)
        first = [5, 6] + image_ids(4) + [7] + image_ids(2) + [8, 9, 10]
        second = [11, 12, 13, 14]
        length = len(first)
        input_ids = torch.tensor([first, [0] * (length - len(second)) + second])
        attention_mask = (torch.arange(length) >= torch.tensor([[0], [length - len(second)]])).long()
        labels = torch.where(attention_mask.bool(), input_ids, -100)
        labels[0, :3] = -100
        return dict(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, image_grid_thw=image_grid_thw
        ), labels


@pytest.fixture
def tester():
    return OvisU1ModelTester()


@pytest.mark.parametrize("model_class", [OvisU1Model, OvisU1ForConditionalGeneration])
def test_return_dict_false_gives_the_same_values_as_a_tuple(tester, model_class):
    torch.manual_seed(0)
    model = model_class(tester.get_config()).eval()
    inputs, labels = tester.prepare_inputs()
    if model_class is OvisU1ForConditionalGeneration:
        inputs["labels"] = labels
    with torch.no_grad():
        expected = model(**inputs, use_cache=True, output_hidden_states=True)
        as_tuple = model(**inputs, use_cache=True, output_hidden_states=True, return_dict=False)
        model.config.return_dict = False
        from_config = model(**inputs, use_cache=True, output_hidden_states=True)
    for output in (as_tuple, from_config):
        assert isinstance(output, tuple) and len(output) == len(expected.to_tuple())
        for got, want in zip(output, expected.to_tuple()):
            if isinstance(want, torch.Tensor):
                assert torch.equal(got, want)
    # The inner calls return dictionaries whatever the config says: the last hidden state comes first.
    first = expected.loss if model_class is OvisU1ForConditionalGeneration else expected.last_hidden_state
    assert torch.equal(from_config[0], first)


def token_losses(model, inputs, labels):
    """Per-token cross-entropy of the next-token targets, written plainly."""
    with torch.no_grad():
        logits = model(**inputs).logits
    targets = labels[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none")
    return losses, int((targets != -100).sum())


def test_loss_with_num_items_in_batch_is_the_summed_token_loss_over_that_count(tester):
    model = tiny_model()
    inputs, labels = tester.prepare_inputs()
    losses, count = token_losses(model, inputs, labels)
    with torch.no_grad():
        mean = model(**inputs, labels=labels).loss
        scaled = model(**inputs, labels=labels, num_items_in_batch=torch.tensor(3 * count)).loss
    torch.testing.assert_close(mean, losses.sum() / count)
    # Trainer passes the item count of all accumulated batches: the loss is a share of their sum, not a mean.
    torch.testing.assert_close(scaled, losses.sum() / (3 * count))


def test_shift_labels_replace_the_shifted_labels(tester):
    model = tiny_model()
    inputs, labels = tester.prepare_inputs()
    # Targets that are not `labels` shifted (context parallelism splits sequences after shifting them).
    shift_labels = torch.where(labels == -100, -100, (labels * 7 + 3) % model.config.vocab_size)
    with torch.no_grad():
        logits = model(**inputs).logits
        loss = model(**inputs, labels=labels, shift_labels=shift_labels).loss
    expected = F.cross_entropy(logits.flatten(0, 1), shift_labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, expected)


def test_vocab_and_hidden_size_write_through_to_the_text_config(tester):
    config = tester.get_config()
    config.vocab_size = 200
    config.hidden_size = 48
    assert (config.text_config.vocab_size, config.text_config.hidden_size) == (200, 48)
    assert (config.vocab_size, config.hidden_size) == (200, 48)


def test_resize_token_embeddings_updates_the_config_and_keeps_old_rows(tester):
    model = tiny_model()
    inputs, _ = tester.prepare_inputs()
    old_rows = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(old_rows.shape[0] + 8, mean_resizing=False)
    assert model.config.vocab_size == model.config.text_config.vocab_size == old_rows.shape[0] + 8
    assert model.lm_head.weight.shape[0] == old_rows.shape[0] + 8
    assert torch.equal(model.get_input_embeddings().weight[: old_rows.shape[0]], old_rows)
    with torch.no_grad():
        assert model(**inputs).logits.shape[-1] == old_rows.shape[0] + 8


def test_tensor_parallel_plan_covers_the_language_model_and_head():
    model = tiny_model()
    assert model.tp_plan["lm_head"] == "colwise_gather_output"
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert f"model.language_model.layers.*.self_attn.{name}" in model.tp_plan
    assert model.pp_plan["lm_head"] == (["hidden_states"], ["logits"])
    assert "model.language_model.layers" in model.pp_plan


def test_tensor_parallel_across_two_processes_equals_one_process(tmp_path):
    model = tiny_model()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    inputs, _ = OvisU1ModelTester().prepare_inputs()
    torch.save(inputs, folder / "inputs.pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)

    script = Path(__file__).with_name("tensor_parallel_generate.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script), str(folder)]
    result = subprocess.run(command + [str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    split = torch.load(tmp_path / "out.pt")
    assert split["world_size"] == 2
    assert split["gate_rows_here"] == model.config.text_config.intermediate_size // 2  # the MLP really is split
    torch.testing.assert_close(split["logits"], logits, atol=1e-5, rtol=1e-5)
    assert split["tokens"].tolist() == tokens.tolist()


def test_flex_attention_equals_sdpa_in_the_vision_encoder_and_the_language_model(tester):
    model = tiny_model()
    inputs, _ = tester.prepare_inputs()
    with torch.no_grad():
        expected = model(**inputs).logits
        model.set_attn_implementation("flex_attention")
        assert model.model.vision_tower.config._attn_implementation == "flex_attention"
        assert model.model.language_model.config._attn_implementation == "flex_attention"
        torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-5, rtol=1e-5)


def test_get_image_features_returns_an_output_with_pooled_visual_embeddings(tester):
    model = tiny_model()
    inputs, _ = tester.prepare_inputs()
    with torch.no_grad():
        features = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], output_hidden_states=True)
        as_tuple = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=False)
        vision = model.model.vision_tower(inputs["pixel_values"], inputs["image_grid_thw"])
        forward = model.model(**inputs)
    assert torch.equal(features.last_hidden_state, vision.last_hidden_state)
    assert len(features.hidden_states) == model.config.vision_config.num_hidden_layers + 1
    assert [tuple(x.shape) for x in features.pooler_output] == [(4, 32), (2, 32)]
    assert torch.equal(torch.cat(features.pooler_output), model.model.visual_embeddings_table(vision.visual_tokens))
    assert torch.equal(torch.cat(features.pooler_output), forward.image_hidden_states)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], features.last_hidden_state)


def test_inputs_embeds_with_pixel_values_equal_input_ids(tester):
    model = tiny_model()
    inputs, _ = tester.prepare_inputs()
    input_ids = inputs.pop("input_ids")
    inputs_embeds = model.get_input_embeddings()(input_ids)
    with torch.no_grad():
        expected = model(input_ids=input_ids, **inputs).logits
        torch.testing.assert_close(model(inputs_embeds=inputs_embeds, **inputs).logits, expected, atol=0, rtol=0)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generate_from_inputs_embeds_with_images_equals_from_input_ids(tester, num_beams):
    model = tiny_model()
    inputs, _ = tester.prepare_inputs()
    input_ids = inputs.pop("input_ids")
    options = dict(max_new_tokens=5, do_sample=False, num_beams=num_beams, eos_token_id=None, pad_token_id=0)
    from_ids = model.generate(input_ids=input_ids, **inputs, **options)
    from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(input_ids), **inputs, **options)
    assert from_embeds.tolist() == from_ids[:, input_ids.shape[1] :].tolist()  # new tokens only, as for any LM


@pytest.mark.parametrize("model_class", [OvisU1Model, OvisU1ForConditionalGeneration])
def test_output_switches_return_the_vision_tower_s_states_and_attentions(tester, model_class):
    torch.manual_seed(0)
    model = model_class._from_config(tester.get_config(), attn_implementation="eager").eval()
    inputs, _ = tester.prepare_inputs()
    images = (inputs["pixel_values"], inputs["image_grid_thw"])
    base = model if model_class is OvisU1Model else model.model
    with torch.no_grad():
        plain = model(**inputs)
        out = model(**inputs, output_hidden_states=True, output_attentions=True)
        features = base.get_image_features(*images, output_hidden_states=True, output_attentions=True)
        as_tuple = model(**inputs, output_hidden_states=True, output_attentions=True, return_dict=False)
    vision, text = model.config.vision_config, model.config.text_config
    # As Qwen2.5-VL and GLM-4V in transformers: the vision encoder's output rides along as `image_outputs`; the
    # output's own `hidden_states` and `attentions` are the language model's.
    assert len(out.hidden_states) == text.num_hidden_layers + 1 and len(out.attentions) == text.num_hidden_layers
    length = inputs["input_ids"].shape[1]
    assert out.attentions[0].shape == (2, text.num_attention_heads, length, length)
    assert len(out.image_outputs.hidden_states) == vision.num_hidden_layers + 1
    assert len(out.image_outputs.attentions) == vision.num_hidden_layers
    assert out.image_outputs.attentions[0].shape == (vision.num_attention_heads, 24, 24)
    assert torch.equal(out.image_outputs.last_hidden_state, features.last_hidden_state)
    for field in ("hidden_states", "attentions", "pooler_output"):
        got, want = getattr(out.image_outputs, field), getattr(features, field)
        assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want)), field
    assert torch.equal(torch.cat(out.image_outputs.pooler_output), out.image_hidden_states)
    # Without the switches: the same values, no per-block outputs.
    assert plain.image_outputs.hidden_states is None and plain.image_outputs.attentions is None
    assert torch.equal(plain.image_outputs.last_hidden_state, out.image_outputs.last_hidden_state)
    # As a tuple, the vision output is a tuple too, last.
    assert isinstance(as_tuple[-1], tuple) and torch.equal(as_tuple[-1][0], out.image_outputs.last_hidden_state)


def test_output_switches_with_text_only_leave_image_outputs_empty(tester):
    model = tiny_model()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[5, 6, 7]]), output_hidden_states=True)
    assert out.image_outputs is None and out.image_hidden_states is None
    assert len(out.hidden_states) == model.config.text_config.num_hidden_layers + 1


def test_decoding_steps_compile_as_one_graph_with_a_static_cache():
    # `_can_compile_fullgraph`: with a static cache, generate compiles the decoding step, which never sees the images.
    assert OvisU1ForConditionalGeneration._can_compile_fullgraph
    model = tiny_model(seed=1, text={"tie_word_embeddings": False}, tie_word_embeddings=False)  # tokens that vary
    inputs, _ = OvisU1ModelTester(seed=1).prepare_inputs()
    options = dict(
        max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0, return_dict_in_generate=True, output_logits=True
    )
    eager = model.generate(**inputs, **options)
    graphs = []

    def inductor(graph, example_inputs):
        graphs.append(graph)
        return torch._inductor.compile(graph, example_inputs)

    config = CompileConfig(fullgraph=True, dynamic=False, backend=inductor, mode=None)
    config._compile_all_devices = True  # compile on the CPU too, as transformers' own test does
    torch.compiler.reset()
    try:
        for _ in range(2):  # the second generation reuses the graph
            compiled = model.generate(**inputs, cache_implementation="static", compile_config=config, **options)
            assert compiled.sequences.tolist() == eager.sequences.tolist()
            torch.testing.assert_close(torch.stack(compiled.logits), torch.stack(eager.logits))
    finally:
        torch.compiler.reset()
    assert len(graphs) == 1

"""Work the pipelines do not repeat: the language model's outputs reused across guidance branches and calls (while the
text encoder's weights stay as they were), and the guidance branches' transformer calls on the CPU (one per branch,
each without padding). Each saving leaves the output as it was."""

import pytest
import torch

from ovis_u1_hf.pipelines import OvisU1EditPipeline
from pipeline_calls import EDIT, T2I, edit_image
from tiny_pipelines import tiny_edit_pipeline, tiny_text_to_image_pipeline


@pytest.fixture
def t2i():
    pipe = tiny_text_to_image_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def edit():
    pipe = tiny_edit_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt=None, **kwargs):
    generator = torch.Generator().manual_seed(0)
    if isinstance(pipe, OvisU1EditPipeline):
        kwargs = {**EDIT, "image": edit_image(), "generator": generator, **kwargs}
    else:
        kwargs = {**T2I, "generator": generator, **kwargs}
    if prompt is not None:
        kwargs["prompt"] = prompt
    return pipe(**kwargs).images


class Counter:
    """How often the vision tower and the language model ran, and on how many sequences."""

    def __init__(self, pipe):
        self.vision, self.turns = 0, 0
        model = pipe.text_encoder.model
        model.vision_tower.register_forward_hook(lambda *_: self.count("vision"))
        model.language_model.register_forward_hook(lambda _, args, kwargs, out: self.count("turns", kwargs),
                                                   with_kwargs=True)  # fmt: skip

    def count(self, name, kwargs=None):
        if name == "vision":
            self.vision += 1
        else:
            self.turns += kwargs["inputs_embeds"].shape[0]

    def take(self):
        counts, self.vision, self.turns = (self.vision, self.turns), 0, 0
        return counts


def test_model_takes_visual_embeddings_instead_of_pixels(t2i):
    model, processor = t2i.text_encoder, t2i.processor
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a cat"}]}]
    inputs = processor.encode_chat([conversation, conversation], images=[[edit_image()], [edit_image()]],
                                   return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        expected = model.get_generation_condition(**inputs)
        visual = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
        pixel_values = inputs.pop("pixel_values")
        got = model.get_generation_condition(**inputs, image_hidden_states=torch.cat(visual))
        outputs = model.model(**inputs, image_hidden_states=torch.cat(visual))
    assert torch.equal(got, expected)
    assert torch.equal(outputs.image_hidden_states, torch.cat(visual))
    with pytest.raises(ValueError, match="`pixel_values` or `image_hidden_states`, not both"):
        model(**inputs, pixel_values=pixel_values, image_hidden_states=torch.cat(visual))
    text_only = processor.tokenizer("a cat", return_tensors="pt")
    with pytest.raises(ValueError, match="image_hidden_states were given but the images have no placeholder"):
        model(**text_only, image_hidden_states=torch.cat(visual))


def test_text_to_image_runs_the_vision_tower_once_and_reuses_repeated_turns(t2i):
    counter = Counter(t2i)
    first = generate(t2i)
    # One white image for both branches; the prompt and the unconditional turn each run the language model.
    assert counter.take() == (1, 2)
    # Another prompt at the same size: only its own turn runs.
    other = generate(t2i, prompt="a blue dog")
    assert counter.take() == (0, 1)
    # The same prompt again: nothing runs, and the image is the same.
    assert torch.equal(torch.as_tensor(generate(t2i)), torch.as_tensor(first))
    assert counter.take() == (0, 0)
    # Another size: another white image.
    generate(t2i, height=48, width=32)
    assert counter.take() == (1, 2)
    assert not torch.equal(torch.as_tensor(other), torch.as_tensor(first))


def test_edit_reuses_the_image_across_branches_and_instructions(edit):
    counter = Counter(edit)
    encodes = []
    edit.vae.encoder.register_forward_hook(lambda _, args, out: encodes.append(args[0].shape[0]))
    first = generate(edit, generator=torch.Generator().manual_seed(1))
    # The input image (instruction and no-text branches) and the white image (no-both branch); the VAE encodes the
    # input once.
    assert counter.take() == (2, 3) and encodes == [1]
    generate(edit, prompt="make it red")
    assert counter.take() == (0, 1) and encodes == [1]
    # The kept posterior gives the same sample for the same seed.
    again = generate(edit, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.as_tensor(again), torch.as_tensor(first))
    edit.context_cache.clear()
    assert torch.equal(torch.as_tensor(generate(edit, generator=torch.Generator().manual_seed(1))),
                       torch.as_tensor(first))  # fmt: skip
    assert encodes == [1, 1]


@pytest.mark.parametrize("kind", ["t2i", "edit"])
def test_reused_outputs_equal_fresh_ones(kind, request):
    pipe = request.getfixturevalue(kind)
    generate(pipe, prompt="warm up the cache")
    cached = generate(pipe)
    pipe.condition_cache.size = 0  # nothing kept: everything computed afresh
    fresh = generate(pipe)
    assert torch.equal(torch.as_tensor(cached), torch.as_tensor(fresh))
    counter = Counter(pipe)
    generate(pipe)
    assert counter.take()[1] == (3 if kind == "edit" else 2)


def weight_changes():
    def in_place(pipe):
        with torch.no_grad():
            pipe.text_encoder.model.language_model.layers[0].mlp.down_proj.weight.mul_(1.5)

    def replaced(pipe):
        layer = next(m for m in pipe.text_encoder.model.vision_tower.modules() if isinstance(m, torch.nn.Linear))
        layer.weight = torch.nn.Parameter(layer.weight.detach() * 1.5)

    def data_set(pipe):
        weight = pipe.text_encoder.model.language_model.layers[0].mlp.down_proj.weight
        weight.data = weight.data * 1.5

    def adapter(pipe):
        from peft import LoraConfig, inject_adapter_in_model

        torch.manual_seed(0)
        config = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
        inject_adapter_in_model(config, pipe.text_encoder.model.language_model)

    def train_mode(pipe):
        pipe.text_encoder.train()

    return {"in_place": in_place, "replaced": replaced, "data_set": data_set, "adapter": adapter, "train_mode": train_mode}


@pytest.mark.parametrize("change", sorted(weight_changes()))
def test_changed_weights_are_not_served_from_the_cache(t2i, change):
    counter = Counter(t2i)
    generate(t2i)
    counter.take()
    weight_changes()[change](t2i)
    after = generate(t2i)
    # Both turns and the white image computed again.
    assert counter.take() == (1, 2)
    fresh = tiny_text_to_image_pipeline()  # same seed: the weights before the change
    weight_changes()[change](fresh)
    assert torch.equal(torch.as_tensor(after), torch.as_tensor(generate(fresh)))
    if change in ("adapter", "train_mode"):
        generate(t2i)
        assert counter.take() == (1, 2)  # adapter scales and dropout may change between calls: nothing is kept


def transformer_calls(pipe):
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda _, args, kwargs: calls.append(kwargs), with_kwargs=True)
    return calls


@pytest.mark.parametrize("kind", ["t2i", "edit"])
def test_a_call_per_branch_equals_one_batched_call(kind, request):
    pipe = request.getfixturevalue(kind)
    num_branches = 3 if kind == "edit" else 2
    pipe.batch_guidance_branches = True
    calls = transformer_calls(pipe)
    batched = generate(pipe)
    assert len(calls) == EDIT["num_inference_steps"] == T2I["num_inference_steps"]
    assert calls[0]["hidden_states"].shape[0] == num_branches
    calls.clear()
    pipe.batch_guidance_branches = None  # the default on the CPU
    separate = generate(pipe)
    assert len(calls) == num_branches * T2I["num_inference_steps"]
    assert all(c["hidden_states"].shape[0] == 1 and c["encoder_attention_mask"] is None for c in calls)
    if kind == "t2i":
        # Each branch's condition without padding: the unconditional text is shorter than the prompt.
        assert calls[0]["encoder_hidden_states"].shape[1] > calls[1]["encoder_hidden_states"].shape[1]
    if kind == "edit":
        # The no-both branch has no context image: its call carries none.
        assert [("context_hidden_states" in c) for c in calls[:3]] == [True, True, False]
        assert calls[0]["context_attention_mask"] is None
    assert abs(torch.as_tensor(separate) - torch.as_tensor(batched)).max() < 1e-5


def test_one_batched_call_drops_masks_that_mask_nothing(t2i):
    # Without guidance a single prompt leaves no padding: the call goes unmasked (on GPUs, to the flash kernels).
    t2i.batch_guidance_branches = True
    calls = transformer_calls(t2i)
    unguided = generate(t2i, guidance_scale=1.0)
    assert calls and all(c["encoder_attention_mask"] is None for c in calls)
    calls.clear()
    generate(t2i)  # the guided branches differ in length: the mask stays
    assert all(c["encoder_attention_mask"] is not None and not c["encoder_attention_mask"].all() for c in calls)
    t2i.batch_guidance_branches = False
    assert torch.equal(torch.as_tensor(generate(t2i, guidance_scale=1.0)), torch.as_tensor(unguided))

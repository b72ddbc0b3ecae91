"""LoRA fine-tuning of the understanding model: labels, the Trainer's loss, adapters, resuming."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainingArguments
from packaging.version import Version

from ovis_u1_hf import OvisU1Processor
from ovis_u1_hf.training import ChatDataCollator, assistant_labels, load_chat_jsonl
from ovis_u1_hf.training.chat_lora import ChatLoraArguments, build_trainer, main, peft_renamed_property_notice_ignored
from tiny import tiny_image_processor, tiny_tokenizer
from tiny_models import tiny_model


peft = pytest.importorskip("peft")

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "white": (250, 250, 250)}


@pytest.fixture(scope="module")
def processor():
    return OvisU1Processor(tiny_image_processor(), tiny_tokenizer())


def base_model(processor, seed=0):
    # Wider initial weights than the default 0.02: with a frozen (tied) output layer that small, no adapter could
    # move the logits far enough for the loss to fall clearly.
    return tiny_model(
        seed=seed,
        text={"initializer_range": 0.3},
        vocab_size=len(processor.tokenizer),
        image_token_id=processor.image_token_id,
        visual_indicator_token_ids=[processor.image_start_token_id, processor.image_end_token_id],
    )


def write_dataset(folder):
    """Eight one-turn conversations about a plain-colored image, answers of different lengths; image paths relative."""
    lines = []
    for index, (name, rgb) in enumerate(list(COLORS.items()) * 2):
        Image.new("RGB", (56 + 28 * (index % 2), 56), rgb).save(folder / f"{index}.png")
        question = "what color is it?" if index % 2 else "the color?"
        answer = f"it is {name}" if index < 4 else f"this image is {name}, plainly {name}"
        content = [{"type": "image", "image": f"{index}.png"}, {"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": messages}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "train.jsonl"


def training_args(output_dir, **kwargs):
    defaults = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    return TrainingArguments(**{**defaults, **kwargs})


def losses(trainer, after_step=0):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry and entry["step"] > after_step]


def labelled_runs(ids, labels):
    """The labelled tokens as runs of consecutive positions: (start, tokens)."""
    runs = []
    for position, (token, label) in enumerate(zip(ids, labels)):
        if label == -100:
            continue
        assert label == token
        if runs and runs[-1][0] + len(runs[-1][1]) == position:
            runs[-1][1].append(token)
        else:
            runs.append((position, [token]))
    return runs


def test_labels_cover_exactly_the_assistant_answers(processor):
    tokenizer = processor.tokenizer
    image = Image.new("RGB", (56, 56), (200, 10, 10))
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "what is it?"}]},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": "and <|im_end|> then?"},
        {"role": "assistant", "content": [{"type": "text", "text": "a dog here"}]},
    ]
    ids, labels = assistant_labels(processor, messages, [image])

    assert ids == processor.encode_chat(messages, images=[image])["input_ids"][0]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers = [tokenizer("a cat")["input_ids"] + [eos], tokenizer("a dog here")["input_ids"] + [eos]]
    runs = labelled_runs(ids, labels)
    assert [tokens for _, tokens in runs] == answers
    # Each answer follows the generation prompt's empty think block and is followed by the turn's newline.
    newline = tokenizer("\n")["input_ids"]
    for start, tokens in runs:
        assert tokenizer.decode(ids[:start]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert ids[start + len(tokens) : start + len(tokens) + 1] == newline
    assert len(ids) - sum(label != -100 for label in labels) > 20  # the prompt, with its image, is not a target


def test_collator_pads_right_and_keeps_labels_aligned_when_truncating(tmp_path, processor):
    examples = load_chat_jsonl(write_dataset(tmp_path))[3:5]
    batch = ChatDataCollator(processor)(examples)
    singles = [assistant_labels(processor, e["messages"], [Image.open(e["messages"][0]["content"][0]["image"])]) for e in examples]
    for row, (ids, labels) in enumerate(singles):
        assert batch["input_ids"][row, : len(ids)].tolist() == ids
        assert batch["labels"][row, : len(ids)].tolist() == labels
        assert (batch["labels"][row, len(ids) :] == -100).all()
        assert batch["attention_mask"][row].sum() == len(ids)
    assert batch["image_grid_thw"].shape[0] == 2

    short = ChatDataCollator(processor, max_length=6)(examples)
    for row, (ids, labels) in enumerate(singles):
        assert short["input_ids"][row].tolist() == ids[-6:]
        assert short["labels"][row].tolist() == labels[-6:]
    assert "pixel_values" not in short  # both images were cut away


@pytest.fixture(scope="module")
def trained(tmp_path_factory, processor):
    """30 steps of the command line's training on the synthetic dataset, whole dataset per step."""
    folder = tmp_path_factory.mktemp("chat_lora")
    base_model(processor).save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    data = write_dataset(folder)
    # fmt: off
    trainer = main([
        "--model", str(folder / "model"), "--data", str(data), "--output-dir", str(folder / "adapter"),
        "--lora_r", "8", "--max_steps", "30", "--per_device_train_batch_size", "8", "--learning_rate", "1e-2",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--disable_tqdm", "true",
    ])
    # fmt: on
    return folder, trainer


def test_training_lowers_the_loss(trained):
    _, trainer = trained
    curve = losses(trainer)
    assert len(curve) == 30
    assert np.mean(curve[-5:]) < 0.3 * np.mean(curve[:5])


def test_first_loss_is_cross_entropy_on_assistant_tokens(trained, processor):
    folder, trainer = trained
    model = base_model(processor)
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    total, count = 0.0, 0
    for example in load_chat_jsonl(folder / "train.jsonl"):
        messages = example["messages"]
        image = Image.open(messages[0]["content"][0]["image"])
        prompt = processor.encode_chat(messages[:1], images=[image], add_generation_prompt=True)["input_ids"][0]
        answer = processor.tokenizer(messages[1]["content"])["input_ids"] + [eos]
        inputs = processor.encode_chat(messages, images=[image], return_tensors="pt")
        assert inputs["input_ids"][0].tolist() == prompt + answer + processor.tokenizer("\n")["input_ids"]
        with torch.no_grad():
            logits = model(**inputs).logits[0].double()
        predicting = logits[len(prompt) - 1 : len(prompt) - 1 + len(answer)]
        total += torch.nn.functional.cross_entropy(predicting, torch.tensor(answer), reduction="sum").item()
        count += len(answer)
    assert losses(trainer)[0] == pytest.approx(total / count, rel=1e-5)


def adapter_inputs(folder, processor):
    inputs = ChatDataCollator(processor)([load_chat_jsonl(folder / "train.jsonl")[2]])
    inputs.pop("labels")
    return inputs


def test_saved_adapter_loads_into_a_fresh_model_and_changes_its_outputs(trained, processor):
    folder, trainer = trained
    inputs = adapter_inputs(folder, processor)
    model = base_model(processor)
    with torch.no_grad():
        base = model(**inputs).logits
        model.load_adapter(str(folder / "adapter"))
        adapted = model(**inputs).logits
        trained_logits = trainer.model.eval()(**inputs).logits
    assert (adapted - base).abs().max() > 1.0
    torch.testing.assert_close(adapted, trained_logits, rtol=1e-4, atol=1e-4)
    if Version(peft.__version__) < Version("0.22.0"):
        pytest.skip("transformers' disable_adapters needs peft>=0.22")
    with torch.no_grad():
        model.disable_adapters()
        assert torch.equal(model(**inputs).logits, base)


def test_disabling_or_unloading_the_adapter_restores_the_base_outputs_exactly(trained, processor):
    folder, _ = trained
    inputs = adapter_inputs(folder, processor)
    with torch.no_grad():
        base = base_model(processor)(**inputs).logits
        with peft_renamed_property_notice_ignored():
            model = peft.PeftModel.from_pretrained(base_model(processor), str(folder / "adapter"))
        adapted = model(**inputs).logits
        with model.disable_adapter():
            disabled = model(**inputs).logits
        unloaded = model.unload()(**inputs).logits
    assert (adapted - base).abs().max() > 1.0
    assert torch.equal(disabled, base)
    assert torch.equal(unloaded, base)


def test_gradient_accumulation_matches_the_full_batch(tmp_path, processor):
    dataset = load_chat_jsonl(write_dataset(tmp_path))
    arguments = ChatLoraArguments(model="", data="", lora_r=8, lora_dropout=0.0)
    runs = []
    for batch_size, accumulation in [(8, 1), (2, 4)]:
        args = training_args(tmp_path / f"run{batch_size}", per_device_train_batch_size=batch_size,
                             gradient_accumulation_steps=accumulation, max_steps=3)
        trainer = build_trainer(base_model(processor), processor, dataset, arguments, args)
        trainer.train()
        runs.append(losses(trainer))
    # Answers of different lengths: a mean of per-micro-batch means would differ from the full batch's mean.
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-4)
    assert runs[0][-1] < runs[0][0]


def test_resuming_from_a_checkpoint_continues_the_same_loss_curve(tmp_path, processor):
    dataset = load_chat_jsonl(write_dataset(tmp_path))
    arguments = ChatLoraArguments(model="", data="", lora_r=8)
    args = dict(per_device_train_batch_size=2, max_steps=8, save_strategy="steps", save_steps=4, learning_rate=5e-3)
    uninterrupted = build_trainer(base_model(processor), processor, dataset, arguments, training_args(tmp_path / "a", **args))
    uninterrupted.train()
    resumed = build_trainer(base_model(processor), processor, dataset, arguments, training_args(tmp_path / "b", **args))
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    assert len(losses(uninterrupted)) == 8
    assert len(losses(resumed, after_step=4)) == 4  # the steps it ran; its log also holds the checkpoint's
    np.testing.assert_allclose(losses(resumed, after_step=4), losses(uninterrupted)[4:], rtol=1e-5)


def command_line_run(folder, data, *options):
    # fmt: off
    return main([
        "--model", str(folder / "model"), "--data", str(data), "--output-dir", str(folder / "_".join(options or ["plain"])),
        "--lora_r", "8", "--lora_dropout", "0", "--max_steps", "3", "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-2", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--use_cpu",
        "--disable_tqdm", "true", "--seed", "0", "--data_seed", "0", *options,
    ])
    # fmt: on


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, processor):
    folder = tmp_path_factory.mktemp("chat_lora_options")
    base_model(processor).save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    return folder, write_dataset(folder)


@pytest.fixture(scope="module")
def plain_run(saved_model):
    return command_line_run(*saved_model)


def test_gradient_checkpointing_gives_the_same_losses(saved_model, plain_run):
    # transformers 5.24 renamed the option (the old name is deprecated there).
    fields = TrainingArguments.__dataclass_fields__
    option = "--activation_checkpointing" if "activation_checkpointing" in fields else "--gradient_checkpointing"
    checkpointed = command_line_run(*saved_model, option)
    language_model = checkpointed.model.base_model.model.model.language_model
    assert any(getattr(module, "gradient_checkpointing", False) is True for module in language_model.modules())
    np.testing.assert_allclose(losses(checkpointed), losses(plain_run), rtol=1e-5)
    assert len(losses(plain_run)) == 3


def lora_names(trainer, tower):
    return [name for name, _ in trainer.model.named_parameters() if "lora_" in name and f".{tower}." in name]


def test_train_vision_adds_lora_to_the_vision_tower(saved_model, plain_run):
    assert lora_names(plain_run, "vision_tower") == [] and lora_names(plain_run, "language_model")
    with_vision = command_line_run(*saved_model, "--train_vision")
    names = lora_names(with_vision, "vision_tower")
    assert names and all(p.requires_grad for n, p in with_vision.model.named_parameters() if n in names)
    # Trained: the vision tower's LoRA B matrices (zero at the start) moved.
    parameters = dict(with_vision.model.named_parameters())
    assert any(parameters[n].abs().max() > 0 for n in names if "lora_B" in n)
    # The saved adapter holds them.
    saved = load_file(Path(with_vision.args.output_dir) / "adapter_model.safetensors")
    assert any(".vision_tower." in key for key in saved)


def test_the_seed_sets_the_adapter_s_initial_weights(saved_model, plain_run):
    torch.manual_seed(1234)  # whatever ran before
    again = command_line_run(*saved_model)
    np.testing.assert_array_equal(losses(again), losses(plain_run))

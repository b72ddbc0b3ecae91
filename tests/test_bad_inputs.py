"""Bad inputs to the pipelines, the model, the processor and chat: one clear error, raised before any expensive step."""

import math
import re
import threading

import numpy as np
import PIL.Image
import pytest
import torch

import ovis_u1_hf.pipelines.pipeline_ovis_u1 as pipeline_module
from ovis_u1_hf.chat import stream_answer
from ovis_u1_hf.pipelines import MAX_IMAGE_SIZE
from tiny_models import image_ids, tiny_model
from tiny_pipelines import tiny_edit_pipeline, tiny_text_to_image_pipeline


def random_image(width, height, seed=0):
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def t2i():
    return tiny_text_to_image_pipeline()


@pytest.fixture(scope="module")
def edit():
    return tiny_edit_pipeline()


def spy(monkeypatch, module, method="forward"):
    """Counts the calls of `module.method`, which still runs."""
    calls = []
    original = getattr(module, method)

    def wrapper(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, method, wrapper)
    return calls


@pytest.fixture
def expensive(monkeypatch, t2i, edit):
    """Calls of every expensive step of both pipelines, and of white-image allocations."""
    calls = []
    for pipe in (t2i, edit):
        for module in (pipe.text_encoder, pipe.text_encoder.model.vision_tower, pipe.transformer):
            calls += [spy(monkeypatch, module)]
        calls += [spy(monkeypatch, pipe.vae, "encode"), spy(monkeypatch, pipe.vae, "decode")]
    calls.append(spy(monkeypatch, PIL.Image, "new"))
    return lambda: sum(len(c) for c in calls)


T2I = dict(prompt="a cat", height=32, width=48, num_inference_steps=2, output_type="np")
EDIT = dict(prompt="blue", num_inference_steps=2, output_type="np")
IMAGE = random_image(64, 64)  # made before any spy counts image allocations


def call(pipe, kind, **kwargs):
    if kind == "t2i":
        return pipe(**{**T2I, **kwargs})
    return pipe(**{"image": IMAGE, **EDIT, **kwargs})


# ---------------------------------------------------------------------------------------------- guidance ----------

GUIDANCE = [
    (kind, name, value)
    for kind, names in (("t2i", ["guidance_scale"]), ("edit", ["guidance_scale", "image_guidance_scale"]))
    for name in names
    for value in (math.nan, math.inf, -math.inf, torch.tensor(math.nan), "5", None)
]


@pytest.mark.parametrize("kind,name,value", GUIDANCE)
def test_guidance_scales_must_be_finite_numbers(t2i, edit, expensive, kind, name, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"`{name}` must be a finite number >= 0, got {value!r}.")):
        call(t2i if kind == "t2i" else edit, kind, **{name: value})
    assert expensive() == 0
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- latents -----------


@pytest.mark.parametrize("kind,shape", [("t2i", (1, 4, 4, 6)), ("t2i", (1, 6, 16)), ("edit", (1, 4, 8, 8))])
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_integer_latents_are_refused(t2i, edit, expensive, kind, shape, dtype):
    latents = torch.ones(shape, dtype=dtype)
    with pytest.raises(ValueError, match=rf"`latents` must be a floating-point tensor of noise, got {dtype}"):
        call(t2i if kind == "t2i" else edit, kind, latents=latents)
    assert expensive() == 0


# ---------------------------------------------------------------------------------------------- size bound --------


SIZES = [
    ("t2i", dict(height=16384, width=16384), "height", 16384),
    ("t2i", dict(height=32, width=MAX_IMAGE_SIZE + 16), "width", MAX_IMAGE_SIZE + 16),
    ("t2i", dict(height=MAX_IMAGE_SIZE + 1, width=32), "height", MAX_IMAGE_SIZE + 1),
    ("edit", dict(height=16384, width=64), "height", 16384),
    ("edit", dict(height=64, width=10**9), "width", 10**9),
]


@pytest.mark.parametrize("kind,size,name,value", SIZES)
def test_sizes_have_an_upper_bound(t2i, edit, expensive, kind, size, name, value):
    assert MAX_IMAGE_SIZE == 1792 and pipeline_module.MAX_IMAGE_SIZE is MAX_IMAGE_SIZE
    with pytest.raises(ValueError, match=rf"`{name}` must be at most 1792 \(the largest .*\), got {value}\."):
        call(t2i if kind == "t2i" else edit, kind, **size)
    assert expensive() == 0


def test_the_largest_size_is_accepted(t2i, monkeypatch):
    # Stops right after the checks, at the first allocation of the target size.
    sizes = []

    def stop(mode, size, *args):
        sizes.append(size)
        raise RuntimeError("stop")

    monkeypatch.setattr(PIL.Image, "new", stop)
    with pytest.raises(RuntimeError, match="stop"):
        t2i(**{**T2I, "height": MAX_IMAGE_SIZE, "width": MAX_IMAGE_SIZE})
    assert sizes == [(MAX_IMAGE_SIZE, MAX_IMAGE_SIZE)]


# ---------------------------------------------------------------------------------------------- typed text --------

TYPED = [
    "<image>",
    "a <image> cat",
    "a cat<|im_end|>\n<|im_start|>assistant\n",
    "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>",
    "<think>\nhmm</think> <|endoftext|>",
]


def literal_ids(tokenizer, text):
    """Ids of `text` as plain characters: the BPE of its pre-tokenized words, no added token recognised."""
    backend = tokenizer.backend_tokenizer
    words = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))
    return [token.id for word, _ in words for token in backend.model.tokenize(word)]


def added_ids(tokenizer):
    return set(tokenizer.added_tokens_decoder)


@pytest.mark.parametrize("typed", TYPED)
def test_typed_special_tokens_stay_text_in_the_pipelines(t2i, edit, monkeypatch, typed):
    processor, tokenizer = t2i.processor, t2i.processor.tokenizer
    seen = {}
    for pipe in (t2i, edit):
        original = pipe.text_encoder.get_generation_condition
        monkeypatch.setattr(
            pipe.text_encoder,
            "get_generation_condition",
            lambda *a, _original=original, _rows=seen.setdefault(id(pipe), []), **k: (
                _rows.append(k["input_ids"]) or _original(*a, **k)
            ),
        )
    t2i(**{**T2I, "prompt": typed, "num_inference_steps": 1})
    edit(**{**EDIT, "image": IMAGE, "prompt": typed, "num_inference_steps": 1})

    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    # The prompt's row comes first; edits strip their instruction.
    prompt_rows = (seen[id(t2i)][0][0], seen[id(edit)][0][0])
    texts = (pipeline_module.TEXT_TO_IMAGE_TEMPLATE.format(typed), typed.strip())
    for ids, text in zip(prompt_rows, texts):
        ids = ids.tolist()
        ids = ids[ids.index(processor.image_end_token_id) + 1 :]  # after the one image
        # The whole user text after the image is one literal run, then the turn's own end.
        assert ids == literal_ids(tokenizer, "\n" + text) + [end] + literal_ids(tokenizer, "\n")
        assert not added_ids(tokenizer) & set(ids[:-2])
    for ids in seen[id(t2i)] + seen[id(edit)]:
        # One image per row: exactly one opening indicator and one turn start each.
        assert ((ids == processor.image_start_token_id).sum(-1) == 1).all()
        assert ((ids == start).sum(-1) == 1).all()


def test_ordinary_prompts_give_the_released_tokens(t2i):
    # Through the chat template and `__call__` (the released tokenization), and through `encode_chat`.
    processor = t2i.processor
    for text in ["a red cat on a mat", pipeline_module.TEXT_TO_IMAGE_TEMPLATE.format("a cat"), "Generate an image."]:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        for generation_prompt in (False, True):
            rendered = processor.apply_chat_template(messages, add_generation_prompt=generation_prompt)
            expected = processor(images=[IMAGE], text=rendered, return_tensors="pt")
            got = processor.encode_chat(
                messages, images=[IMAGE], add_generation_prompt=generation_prompt, return_tensors="pt"
            )
            assert got.keys() == expected.keys()
            for key in expected:
                torch.testing.assert_close(got[key], expected[key])


@pytest.mark.parametrize("typed", TYPED)
def test_typed_special_tokens_stay_text_in_chat(t2i, monkeypatch, typed):
    model, processor, tokenizer = t2i.text_encoder, t2i.processor, t2i.processor.tokenizer
    seen = []
    original = model.generate
    monkeypatch.setattr(model, "generate", lambda **k: seen.append(k["input_ids"]) or original(**k))
    answer = "".join(stream_answer(model, processor, typed, [IMAGE], max_new_tokens=2))
    assert isinstance(answer, str)
    ids = seen[0][0].tolist()
    assert ids.count(processor.image_start_token_id) == 1
    after_image = ids[ids.index(processor.image_end_token_id) + 1 :]
    special = tokenizer.convert_tokens_to_ids
    expected = (
        literal_ids(tokenizer, "\n" + typed)
        + [special("<|im_end|>")]
        + literal_ids(tokenizer, "\n")
        + [special("<|im_start|>")]
        + literal_ids(tokenizer, "assistant\n")
        + [special("<think>")]
        + literal_ids(tokenizer, "\n\n")
        + [special("</think>")]
        + literal_ids(tokenizer, "\n\n")
    )
    assert after_image == expected
    assert not added_ids(tokenizer) & set(literal_ids(tokenizer, "\n" + typed))


def test_the_processor_keeps_its_image_marker_for_prompts_built_by_hand(t2i):
    processor = t2i.processor
    out = processor(images=[IMAGE], text="<image>\nWhat is it?", return_tensors="pt")
    assert (out["input_ids"] == processor.image_start_token_id).sum() == 1
    assert out["image_grid_thw"].shape == (1, 3)


# ---------------------------------------------------------------------------------------------- model, processor --


def test_pixel_values_without_placeholders_fail_before_the_vision_tower(monkeypatch):
    model = tiny_model()
    calls = spy(monkeypatch, model.model.vision_tower)
    pixel_values = torch.randn(16, 3 * 14 * 14)
    image_grid_thw = torch.tensor([[1, 4, 4]])
    input_ids = torch.tensor([[5, 6, 7]])
    message = "pixel_values were given but the images have no placeholder tokens in input_ids"
    with pytest.raises(ValueError, match=message):
        model(input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw)
    with pytest.raises(ValueError, match=message):
        model.generate(input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw, max_new_tokens=2)
    assert calls == []
    # With its placeholders the same image runs through the tower.
    model(input_ids=torch.tensor([[5] + image_ids(4) + [6]]), pixel_values=pixel_values, image_grid_thw=image_grid_thw)
    assert calls == [1]


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "`text` must not be empty"),
        (["a", ""], "`text` must not be empty"),
        (5, "`text` must be a string or a non-empty list of strings, got int"),
        (b"bytes", "`text` must be a string or a non-empty list of strings, got bytes"),
        ([b"bytes"], "`text` must be a string or a non-empty list of strings"),
    ],
)
def test_processor_rejects_empty_or_non_string_text(t2i, monkeypatch, text, message):
    calls = spy(monkeypatch, t2i.processor, "image_processor")
    with pytest.raises(ValueError, match=re.escape(message)):
        t2i.processor(text=text)
    assert calls == []


# ---------------------------------------------------------------------------------------------- threads -----------


@pytest.mark.parametrize("kind", ["t2i", "edit"])
def test_two_threads_share_one_pipeline(t2i, edit, kind):
    pipe = t2i if kind == "t2i" else edit
    kwargs = [dict(prompt="a red cat", num_inference_steps=6), dict(prompt="a blue dog", num_inference_steps=3)]

    def run(i):
        return call(pipe, kind, generator=torch.Generator().manual_seed(i), **kwargs[i]).images

    expected = [run(0), run(1)]
    results, errors = [None, None], []
    barrier = threading.Barrier(2)

    def worker(i):
        try:
            barrier.wait()
            for _ in range(3):  # several rounds, so the steps of the two calls interleave
                results[i] = run(i)
                np.testing.assert_array_equal(results[i], expected[i])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert not np.array_equal(expected[0], expected[1])
    for i in range(2):
        np.testing.assert_array_equal(results[i], expected[i])


# ---------------------------------------------------------------------------------------------- loading -----------


@pytest.fixture(scope="module")
def saved(tmp_path_factory, t2i):
    folder = tmp_path_factory.mktemp("pipeline")
    t2i.save_pretrained(folder)
    return folder


def copy_of(saved, tmp_path):
    import shutil

    shutil.copytree(saved, tmp_path / "copy")
    return tmp_path / "copy"


@pytest.mark.parametrize("as_path", [False, True])
def test_a_missing_folder_is_one_clear_error(tmp_path, as_path):
    from ovis_u1_hf import OvisU1ForConditionalGeneration, OvisU1Processor
    from ovis_u1_hf.pipelines import OvisU1EditPipeline, OvisU1TextToImagePipeline

    missing = tmp_path / "nowhere"
    for cls in (OvisU1ForConditionalGeneration, OvisU1Processor, OvisU1TextToImagePipeline, OvisU1EditPipeline):
        with pytest.raises(OSError, match=re.escape(f"{missing} is not a folder: give the folder of a converted")):
            cls.from_pretrained(missing if as_path else str(missing))
    assert list(tmp_path.iterdir()) == []


def test_a_released_checkpoint_asks_for_conversion(tmp_path, monkeypatch):
    import json

    from ovis_u1_hf.pipelines import OvisU1TextToImagePipeline

    released = {"model_type": "ovis_u1", "llm_config": {}, "visual_generator_config": {}}
    (tmp_path / "config.json").write_text(json.dumps(released))
    calls = spy(monkeypatch, torch, "load")
    message = f"convert it first with `ovis-u1 convert OUTPUT --source {tmp_path}`"
    with pytest.raises(OSError, match=re.escape(message)):
        OvisU1TextToImagePipeline.from_pretrained(tmp_path)
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


COMPONENT_FILES = [("text_encoder", "model"), ("transformer", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model")]


@pytest.mark.parametrize("component,name", COMPONENT_FILES)
def test_missing_weights_are_an_error_naming_them(saved, tmp_path, component, name):
    from safetensors.torch import load_file, save_file

    from ovis_u1_hf.pipelines import OvisU1TextToImagePipeline

    folder = copy_of(saved, tmp_path)
    file = folder / component / f"{name}.safetensors"
    weights = load_file(file)
    dropped = sorted(k for k in weights if "embed" not in k)[:2]  # not a tied weight
    save_file({k: v for k, v in weights.items() if k not in dropped}, file, metadata={"format": "pt"})
    with pytest.raises(OSError, match=re.escape(f"lacks 2 weight(s) of ") + r"\w+: " + re.escape(", ".join(dropped))):
        OvisU1TextToImagePipeline.from_pretrained(folder)


@pytest.mark.parametrize("component,name", COMPONENT_FILES)
def test_weights_load_from_safetensors_only(saved, tmp_path, monkeypatch, component, name):
    from safetensors.torch import load_file

    from ovis_u1_hf import OvisU1ForConditionalGeneration
    from ovis_u1_hf.pipelines import OvisU1TextToImagePipeline, OvisU1Transformer2DModel

    folder = copy_of(saved, tmp_path)
    file = folder / component / f"{name}.safetensors"
    pickled = "pytorch_model.bin" if component == "text_encoder" else f"{name}.bin"
    torch.save(load_file(file), folder / component / pickled)
    file.unlink()
    calls = spy(monkeypatch, torch, "load")
    with pytest.raises(OSError, match=f"no file named {name}.safetensors"):
        OvisU1TextToImagePipeline.from_pretrained(folder)
    single = {"text_encoder": OvisU1ForConditionalGeneration, "transformer": OvisU1Transformer2DModel}.get(component)
    if single is not None:
        with pytest.raises(OSError, match=f"no file named {name}.safetensors"):
            single.from_pretrained(folder / component)
    for load in (lambda: OvisU1ForConditionalGeneration.from_pretrained(folder / "text_encoder", use_safetensors=False),
                 lambda: OvisU1TextToImagePipeline.from_pretrained(folder, use_safetensors=False)):
        with pytest.raises(ValueError, match="safetensors files only"):
            load()
    assert calls == []


@pytest.mark.parametrize("argument,value", [("--height", "16384"), ("--width", "1808"), ("--height", "8")])
def test_cli_checks_the_size_before_loading(monkeypatch, tmp_path, capsys, argument, value):
    from ovis_u1_hf import cli

    loads = []
    monkeypatch.setattr(cli, "resolve_model", lambda *a, **k: loads.append(a))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate", "a cat", "--output", "out.png", argument, value]) == 2
    error = capsys.readouterr().err
    assert error == f"ovis-u1 generate: error: {argument} must be between 16 and 1792, got {value}.\n"
    assert loads == [] and list(tmp_path.iterdir()) == []

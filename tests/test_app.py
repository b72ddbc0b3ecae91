"""The Gradio app (`ovis-u1 app`): its callbacks on a tiny pipeline, and its page in a headless browser."""

import importlib
import io
import os
import re
import shutil
import socket
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ovis_u1_hf
from ovis_u1_hf import OvisU1EditPipeline
from ovis_u1_hf.app import OvisU1App, build_app, launch
from tiny_pipelines import tiny_text_to_image_pipeline


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
QUESTION = "what is it?"
MAX_NEW_TOKENS = 6

# Gradio 6.31's queue uses pandas options that pandas 3 deprecates.
pytestmark = pytest.mark.filterwarnings(
    "ignore:'future.no_silent_downcasting' is deprecated", "ignore:The copy keyword is deprecated"
)


def with_readable_answers(pipe):
    """The tiny model ties its output layer to random embeddings, so it answers by repeating its last input token (a
    newline). An untied random output layer that can only pick letter tokens makes its greedy answers visible
    words; the image condition (hidden states) does not use that layer."""
    model, tokenizer = pipe.text_encoder, pipe.processor.tokenizer
    words = [index for token, index in tokenizer.get_vocab().items() if re.fullmatch("Ġ?[A-Za-z]+", token)]
    torch.manual_seed(0)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features)
    with torch.no_grad():
        head.bias.fill_(-1e4)
        head.bias[words] = 0.0
    model.lm_head = head
    return pipe


def an_image(seed: int, height: int, width: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def greedy_answer(pipe, question, images) -> str:
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    prompt = pipe.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = pipe.processor(images=images or None, text=prompt, return_tensors="pt")
    output = pipe.text_encoder.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return pipe.processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def pipeline_images(pipe, prompt, width, height, steps, seed, count, guidance=5.0):
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        prompt,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        num_images_per_prompt=count,
        generator=generator,
    ).images


def pipeline_edit(pipe, image, instruction, steps, seed, **kwargs):
    """The edit of the app's components by an edit pipeline of its own."""
    reference = OvisU1EditPipeline.from_pipe(pipe, dtype=torch.float32)
    reference.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return reference(image, instruction, num_inference_steps=steps, generator=generator, **kwargs).images[0]


@pytest.fixture(scope="module")
def pipe():
    return with_readable_answers(tiny_text_to_image_pipeline())


@pytest.fixture(scope="module")
def app(pipe):
    return OvisU1App(pipe)


# ------------------------------------------------------------------ callbacks -------------------------------------


def test_generate_returns_the_pipeline_images(app, pipe):
    # Gradio passes slider values as floats.
    images = app.generate("a red cat", 48.0, 32.0, 2.0, 4.0, 3.0, 2.0)
    expected = pipeline_images(pipe, "a red cat", 48, 32, 2, 3, 2, guidance=4.0)
    assert len(images) == 2
    for image, reference in zip(images, expected):
        assert image.size == (48, 32)
        assert np.array_equal(np.asarray(image), np.asarray(reference))


def test_generate_reports_each_denoising_step(app):
    reports = []
    app.generate("a red cat", 32, 32, 3, 5.0, 0, 1, progress=lambda value, **kwargs: reports.append(value))
    assert reports == [(1, 3), (2, 3), (3, 3)]


def test_edit_returns_the_pipeline_edit(app, pipe):
    image = an_image(0, 40, 56)
    edited = app.edit(image, "make it blue", 2.0, 5.0, 1.2, 1.0)
    expected = pipeline_edit(pipe, image, "make it blue", 2, 1, guidance_scale=5.0, image_guidance_scale=1.2)
    assert edited.size == (96, 64)
    assert np.array_equal(np.asarray(edited), np.asarray(expected))


def test_edit_makes_the_chosen_size(app, pipe):
    image = an_image(0, 40, 56)
    # Gradio passes the number fields' values as floats.
    edited = app.edit(image, "make it blue", 2.0, 5.0, 1.2, 1.0, 80.0, 48.0)
    expected = pipeline_edit(
        pipe, image, "make it blue", 2, 1, guidance_scale=5.0, image_guidance_scale=1.2, height=48, width=80
    )
    assert edited.size == expected.size == (80, 48)
    assert np.array_equal(np.asarray(edited), np.asarray(expected))
    # Both fields at 0 or empty: the edit pipeline's size rule (56 x 40 -> 96 x 64).
    for width, height in ((0, 0), (None, None), (0.0, None)):
        assert app.edit(image, "make it blue", 1, 5.0, 1.2, 1, width, height).size == (96, 64)


def test_the_edit_pipeline_shares_the_modules_in_their_dtype():
    # `OvisU1EditPipeline.from_pipe(pipe)` would cast the shared modules to float32.
    pipe = tiny_text_to_image_pipeline().to(dtype=torch.bfloat16)
    app = OvisU1App(pipe)
    assert app.edit_pipe.transformer is pipe.transformer and app.edit_pipe.text_encoder is pipe.text_encoder
    assert {module.dtype for module in (pipe.text_encoder, pipe.transformer)} == {torch.bfloat16}
    assert pipe.vae.dtype == torch.float32  # a dtype cast leaves the VAE in float32, as it decodes


def test_chat_streams_the_greedy_answer(app, pipe):
    images = [an_image(1, 50, 70), an_image(2, 30, 30)]
    gallery = [(image, None) for image in images]  # a Gradio gallery's value
    answers = list(app.chat(gallery, QUESTION, float(MAX_NEW_TOKENS)))
    expected = greedy_answer(pipe, QUESTION, images)
    assert answers[-1] == expected and expected.strip()
    assert len(answers) > 1 and all(expected.startswith(answer) for answer in answers)


def test_chat_without_images(app, pipe):
    assert list(app.chat(None, QUESTION, MAX_NEW_TOKENS))[-1] == greedy_answer(pipe, QUESTION, [])


def test_bad_inputs_are_shown_to_the_user(app):
    gradio = pytest.importorskip("gradio", reason='needs Gradio (pip install "ovis-u1-hf[demo]")')

    def shown(callback, *args):
        with pytest.raises(gradio.Error) as error:
            result = callback(*args)
            next(result) if callback == app.chat else result
        return error.value.message

    assert shown(app.chat, None, "  ", MAX_NEW_TOKENS) == "Question is empty: type what to ask about the images."
    assert shown(app.generate, "", 32, 32, 1, 5.0, 0, 1) == "Prompt is empty: describe the image to generate."
    assert shown(app.generate, "a cat", 32, 32, 0, 5.0, 0, 1) == "Steps must be a number of at least 1, got 0."
    assert shown(app.generate, "a cat", 32, 32, 1, float("nan"), 0, 1) == "Guidance must be a number of at least 0, got nan."
    assert shown(app.generate, "a cat", 8, 32, 1, 5.0, 0, 1) == "The image size must be at least 16x16, got 8x32."
    assert shown(app.edit, None, "make it blue", 1, 6.0, 1.5, 0) == "Image is missing: upload the image to edit."
    assert shown(app.edit, an_image(0, 40, 40), " ", 1, 6.0, 1.5, 0) == "Instruction is empty: describe the edit to make."
    assert shown(app.edit, an_image(0, 40, 40), "x", 1, 6.0, -1, 0) == "Image guidance must be a number of at least 0, got -1."
    image = an_image(0, 40, 40)
    assert shown(app.edit, image, "x", 1, 6.0, 1.5, 0, 0, 48) == (
        "Give both Height and Width, or leave both at 0 for the input's aspect ratio at about one megapixel."
    )
    assert shown(app.edit, image, "x", 1, 6.0, 1.5, 0, 64, None).startswith("Give both Height and Width")
    assert shown(app.edit, image, "x", 1, 6.0, 1.5, 0, 1808, 48) == "Width must be between 16 and 1792, got 1808."
    assert shown(app.edit, image, "x", 1, 6.0, 1.5, 0, 64, -16) == "Height must be between 16 and 1792, got -16."
    assert shown(app.edit, image, "x", 1, 6.0, 1.5, 0, 64, 50) == "Height must be a multiple of 16, got 50: use 48 or 64."
    assert shown(app.edit, image, "x", 1, 6.0, 1.5, 0, 64.5, 48) == "Width must be a whole number of pixels, got 64.5."


def test_uploaded_images_are_checked_like_the_command_line(app, tmp_path):
    gradio = pytest.importorskip("gradio", reason='needs Gradio (pip install "ovis-u1-hf[demo]")')
    an_image(0, 64, 64).save(tmp_path / "photo.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "photo.png").read_bytes()[:2000])
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(gradio.Error) as error:
        app.edit(str(tmp_path / "cut.png"), "make it blue", 1, 6.0, 1.5, 0)
    assert error.value.message == (
        "The image cut.png is truncated or damaged (image file is truncated): save or "
        "download it again."
    )
    with pytest.raises(gradio.Error) as error:
        next(app.chat([(str(tmp_path / "notes.png"), None)], QUESTION, MAX_NEW_TOKENS))
    assert error.value.message == "The image notes.png is not an image file PIL can read: give a PNG, JPEG, WebP, ... file."


def test_app_has_the_three_tabs_queued_one_at_a_time(pipe):
    gradio = pytest.importorskip("gradio", reason='needs Gradio (pip install "ovis-u1-hf[demo]")')
    demo = build_app(pipe)
    tabs = [block.label for block in demo.blocks.values() if isinstance(block, gradio.Tab)]
    assert tabs == ["Chat", "Generate", "Edit"]
    model_events = {fn.name: fn for fn in demo.fns.values() if fn.name in ("chat", "generate", "edit")}
    assert len(model_events) == 3
    # One slot for all three: the model serves one request at a time.
    slots = {(fn.queue, fn.concurrency_limit, fn.concurrency_id) for fn in model_events.values()}
    assert slots == {(True, 1, "ovis-u1")}


def test_the_package_imports_without_gradio_and_the_app_names_the_extra(monkeypatch, pipe):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    monkeypatch.setattr(ovis_u1_hf, "app", sys.modules["ovis_u1_hf.app"])  # restored after the re-import below
    monkeypatch.delitem(sys.modules, "ovis_u1_hf.app")
    app_module = importlib.import_module("ovis_u1_hf.app")
    with pytest.raises(ImportError, match=re.escape('pip install "ovis-u1-hf[demo]"')):
        app_module.build_app(pipe)


# ------------------------------------------------------------------ browser ---------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_browser_tools():
    """Skips the browser tests where Chromium, Gradio or playwright is missing (a dev setup), or fails them where
    OVIS_U1_REQUIRE_BROWSER=1 says they must run (CI installs all three)."""
    missing = []
    if not shutil.which(CHROMIUM):
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    for module, install in (("gradio", 'pip install "ovis-u1-hf[demo]"'), ("playwright", "pip install playwright")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(f"{module} ({install})")
    if missing:
        reason = "the browser tests need " + ", ".join(missing)
        if os.environ.get("OVIS_U1_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def page(pipe, tmp_path_factory):
    """The app served on 127.0.0.1 in this process, open in headless Chromium with a fresh profile."""
    require_browser_tools()
    from playwright import sync_api

    with pytest.MonkeyPatch.context() as monkeypatch, sync_api.sync_playwright() as playwright:
        monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        port = free_port()
        demo = launch(pipe, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
        try:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path_factory.mktemp("chromium-profile")),
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
            )
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"http://127.0.0.1:{port}/")
            yield page
            browser.close()
        finally:
            demo.close()


def set_number(tab, label: str, value) -> None:
    from playwright.sync_api import expect

    field = tab.get_by_label(label, exact=True)
    # A slider takes the number field's value a moment later: its range input shows it once it holds it.
    slider = field.locator(
        "xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' wrap ')][1]"
        "/div[contains(@class, 'slider_input_container')]//input[@type='range']"
    )
    # A component still mounting (an accordion just opened) may put its initial value back over a typed one: type it
    # again until it holds.
    for attempt in range(5):
        field.fill(str(value))
        field.press("Enter")
        field.blur()  # leaving the field commits its value to the app before anything runs
        try:
            expect(field).to_have_value(str(value), timeout=2_000)
            if slider.count():
                expect(slider).to_have_value(str(value), timeout=2_000)
            return
        except AssertionError:
            if attempt == 4:
                raise


def fill_edit_tab(page, image_path, instruction: str, steps: int, seed: int):
    """Opens the Edit tab and fills in the image, the instruction, the steps and the seed; returns the tab."""
    page.get_by_role("tab", name="Edit").click()
    tab = page.locator("#edit-tab")
    page.locator("#edit-image input[type=file]").set_input_files(str(image_path))
    page.locator("#edit-instruction textarea").fill(instruction)
    set_number(tab, "number input for Steps", steps)
    set_number(tab, "Seed", seed)
    return tab


def shown_image(page, image) -> Image.Image:
    """The image file an <img> of the page shows, as the browser fetches it."""
    source = image.get_attribute("src")
    assert source
    return Image.open(io.BytesIO(page.request.get(source).body())).convert("RGB")


def test_browser_generate_shows_the_pipeline_images(page, pipe):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Generate").click()
    tab = page.locator("#generate-tab")
    page.locator("#generate-prompt textarea").fill("a red cat")
    set_number(tab, "number input for Width", 256)
    set_number(tab, "number input for Height", 272)
    set_number(tab, "number input for Steps", 2)
    set_number(tab, "Seed", 7)
    set_number(tab, "number input for Images", 2)
    page.locator("#generate-run").click()

    thumbnails = page.locator("#generate-gallery img")
    expect(thumbnails).to_have_count(2, timeout=30_000)
    expected = pipeline_images(pipe, "a red cat", 256, 272, 2, 7, 2)
    for index, reference in enumerate(expected):
        shown = shown_image(page, thumbnails.nth(index))
        assert shown.size == (256, 272)
        assert np.array_equal(np.asarray(shown), np.asarray(reference))


def test_browser_chat_shows_the_greedy_answer(page, pipe, tmp_path):
    from playwright.sync_api import expect

    image_path = tmp_path / "photo.png"
    an_image(3, 50, 70).save(image_path)
    expected = greedy_answer(pipe, QUESTION, [Image.open(image_path)])

    page.get_by_role("tab", name="Chat").click()
    tab = page.locator("#chat-tab")
    page.locator("#chat-images input[type=file]").set_input_files(str(image_path))
    expect(page.locator("#chat-images img")).to_have_count(1)
    page.locator("#chat-question textarea").fill(QUESTION)
    page.get_by_text("Options").click()
    set_number(tab, "number input for Max new tokens", MAX_NEW_TOKENS)
    page.locator("#chat-run").click()

    expect(page.locator("#chat-answer textarea")).to_have_value(expected, timeout=30_000)


def test_browser_edit_shows_the_pipeline_edit(page, pipe, tmp_path):
    from playwright.sync_api import expect

    image_path = tmp_path / "photo.png"
    an_image(4, 40, 56).save(image_path)
    expected = pipeline_edit(pipe, Image.open(image_path), "make it blue", 2, 5)

    fill_edit_tab(page, image_path, "make it blue", steps=2, seed=5)
    page.locator("#edit-run").click()

    output = page.locator("#edit-output img")
    expect(output).to_have_count(1, timeout=30_000)
    shown = shown_image(page, output)
    assert shown.size == (96, 64)
    assert np.array_equal(np.asarray(shown), np.asarray(expected))


def test_browser_edit_makes_the_chosen_size(page, pipe, tmp_path):
    from playwright.sync_api import expect

    image_path = tmp_path / "photo.png"
    an_image(8, 40, 56).save(image_path)
    expected = pipeline_edit(pipe, Image.open(image_path), "make it blue", 2, 5, height=48, width=80)

    page.reload()  # the size fields at their defaults
    tab = fill_edit_tab(page, image_path, "make it blue", steps=2, seed=5)
    set_number(tab, "Height", 48)
    page.locator("#edit-run").click()
    expect(page.get_by_text("Give both Height and Width, or leave both at 0")).to_be_visible()
    set_number(tab, "Width", 80)
    page.locator("#edit-run").click()

    output = page.locator("#edit-output img")
    expect(output).to_have_count(1, timeout=30_000)
    shown = shown_image(page, output)
    assert shown.size == (80, 48)  # not the default 96 x 64 of a 56 x 40 input
    assert np.array_equal(np.asarray(shown), np.asarray(expected))


def test_browser_shows_bad_inputs_by_their_field_without_a_server_traceback(page, tmp_path, capfd):
    from playwright.sync_api import expect

    an_image(6, 64, 64).save(tmp_path / "photo.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "photo.png").read_bytes()[:2000])
    capfd.readouterr()

    page.get_by_role("tab", name="Edit").click()
    page.locator("#edit-image input[type=file]").set_input_files(str(tmp_path / "photo.png"))
    page.locator("#edit-instruction textarea").fill("   ")
    page.locator("#edit-run").click()
    expect(page.get_by_text("Instruction is empty: describe the edit to make.")).to_be_visible()

    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-images input[type=file]").set_input_files(str(tmp_path / "cut.png"))
    page.locator("#chat-question textarea").fill(QUESTION)
    page.locator("#chat-run").click()
    message = "The image cut.png is truncated or damaged (image file is truncated): save or download it again."
    expect(page.get_by_text(message)).to_be_visible()
    assert "Traceback" not in "".join(capfd.readouterr())


def test_browser_names_an_upload_that_is_no_image_or_a_decompression_bomb(page, tmp_path, monkeypatch, capfd):
    """Gradio reads nothing that the image fields upload: the app's own check names the file and what to do."""
    import PIL.Image
    from playwright.sync_api import expect

    (tmp_path / "notes.png").write_text("not an image")
    an_image(7, 64, 64).save(tmp_path / "bomb.png")
    # The server runs in this process: with PIL's limit lowered here, this small file is a decompression bomb by PIL's
    # measure (over twice the limit), and the browser need not decode a real one's gigapixels for its preview.
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    messages = {
        "notes.png": "The image notes.png is not an image file PIL can read: give a PNG, JPEG, WebP, ... file.",
        "bomb.png": (
            "The image bomb.png is too large to open safely (Image size (4096 pixels) exceeds limit of 2000 pixels, "
            "could be decompression bomb DOS attack.): resize it first."
        ),
    }
    fields = {
        "Edit": ("#edit-image input[type=file]", "#edit-instruction textarea", "#edit-run"),
        "Chat": ("#chat-images input[type=file]", "#chat-question textarea", "#chat-run"),
    }
    capfd.readouterr()
    for tab, (upload, text, run) in fields.items():
        for name, message in messages.items():
            page.reload()  # an empty page: no earlier upload, no earlier message
            page.get_by_role("tab", name=tab).click()
            page.locator(upload).set_input_files(str(tmp_path / name))
            page.locator(text).fill("make it blue")
            page.locator(run).click()
            expect(page.get_by_text(message)).to_be_visible()
    assert "Traceback" not in "".join(capfd.readouterr())


def test_browser_refuses_an_upload_over_the_size_limit(page, tmp_path):
    from playwright.sync_api import expect

    from ovis_u1_hf.app import MAX_FILE_SIZE

    assert MAX_FILE_SIZE == "20MB"
    large = tmp_path / "large.png"
    large.write_bytes(b"\0" * (21 * 1024 * 1024))
    page.get_by_role("tab", name="Edit").click()
    page.locator("#edit-image input[type=file]").set_input_files(str(large))
    expect(page.get_by_text('File(s) exceed the maximum allowed size of 20.0 Mb: "large.png"')).to_be_visible()
    expect(page.locator("#edit-image img")).to_have_count(0)

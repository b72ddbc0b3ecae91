# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""A Gradio app for Ovis-U1: chat about images, generate images from text, edit images from instructions.

`ovis-u1 app --model ...` starts it; in Python, `launch(pipe)` or `build_app(pipe).launch()` with a loaded
[`OvisU1TextToImagePipeline`]. Gradio is imported only here and only when the app is built (the `demo` extra).
"""

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import PIL.Image
import torch

from .chat import stream_answer
from .inputs import InputError, check_image_side, check_text, open_image
from .pipelines import MAX_IMAGE_SIZE, OvisU1EditPipeline, OvisU1TextToImagePipeline


DEMO_EXTRA_HINT = 'The Ovis-U1 app needs Gradio: pip install "ovis-u1-hf[demo]"'
MAX_FILE_SIZE = "20MB"  # largest upload: far above any sensible photo, far below what would exhaust the server

# One model serves every tab: its events share one queue slot so that requests run one at a time.
MODEL_CONCURRENCY_ID = "ovis-u1"

GENERATE_EXAMPLES = [
    "a cat wearing a red scarf, sitting on a windowsill in the snow",
    "a lighthouse on a rocky coast at sunset, oil painting",
    "a bowl of ramen with a soft-boiled egg, top view, studio light",
]


def import_gradio():
    try:
        import gradio
    except ImportError as error:
        raise ImportError(f"{DEMO_EXTRA_HINT} ({error})") from error
    return gradio


def user_error(error: Exception, fields: dict[str, str] | None = None) -> Exception:
    """A Gradio error, which the page shows to the user (and the server does not log as a failure), for a bad input.
    `fields` maps the pipeline's argument names in the message to the labels of the page's fields."""
    message = str(error)
    for argument, label in (fields or {}).items():
        message = message.replace(f"`{argument}`", label)
    # A bad input is the user's to fix, not a server failure: no traceback in the server log.
    return import_gradio().Error(message.replace("`", ""), print_exception=False)


def user_image(image, what: str = "The image") -> PIL.Image.Image:
    """An uploaded image (a file path, as the page's image fields pass them) checked like the command line's, or a
    PIL image as it is."""
    if isinstance(image, (str, Path)):
        return open_image(image, f"{what} {Path(image).name}")
    return image


def check_number(value, label: str, minimum: float) -> float:
    if value is None or not math.isfinite(value) or value < minimum:
        raise InputError(f"{label} must be a number of at least {minimum:g}, got {value}.")
    return value


def check_edit_size(width, height, multiple: int) -> tuple[int | None, int | None]:
    """`(height, width)` of an edit from the Edit tab's fields; both empty or 0: `(None, None)`, the edit pipeline's
    default (the input's aspect ratio at about one megapixel, as the released model)."""
    chosen = [value not in (None, 0) for value in (height, width)]
    if not any(chosen):
        return None, None
    if not all(chosen):
        raise InputError(
            "Give both Height and Width, or leave both at 0 for the input's aspect ratio at about one megapixel."
        )
    return check_image_side(height, "Height", multiple), check_image_side(width, "Width", multiple)


GENERATE_FIELDS = {
    "prompt": "Prompt",
    "height": "Height",
    "width": "Width",
    "num_inference_steps": "Steps",
    "guidance_scale": "Guidance",
    "num_images_per_prompt": "Images",
}
EDIT_FIELDS = {
    "prompt": "Instruction",
    "image": "Image",
    "height": "Height",
    "width": "Width",
    "num_inference_steps": "Steps",
    "guidance_scale": "Text guidance",
    "image_guidance_scale": "Image guidance",
}


class OvisU1App:
    r"""
    The app's callbacks, one per tab, on a loaded pipeline: chat uses its `text_encoder` and `processor`, edit an
    [`OvisU1EditPipeline`] sharing its components. They take and return what the Gradio components pass (PIL
    images, numbers as floats) and raise `gradio.Error` for bad inputs.

    Args:
        pipe ([`OvisU1TextToImagePipeline`]):
            The loaded pipeline (on its device, or with model CPU offload).
    """

    def __init__(self, pipe: OvisU1TextToImagePipeline):
        self.pipe = pipe
        # Not `from_pipe`: it casts the shared modules to float32 unless given a dtype (and casts them, warning per
        # module, even to their own dtype); the constructor shares them as they are, with any offload hooks on them.
        self.edit_pipe = OvisU1EditPipeline(**pipe.components)
        self.edit_pipe.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))

    def chat(
        self,
        images: list | None,
        question: str,
        max_new_tokens: float = 1024,
        think: bool = False,
    ) -> Iterator[str]:
        """Yields the greedy answer so far. `images`: a gallery's value, `(image, caption)` pairs, or images (files or
        PIL images)."""
        try:
            check_text(question, "Question", "type what to ask about the images.")
            check_number(max_new_tokens, "Max new tokens", 1)
            images = [user_image(item[0] if isinstance(item, (tuple, list)) else item) for item in images or []]
            answer = ""
            for text in stream_answer(
                self.pipe.text_encoder,
                self.pipe.processor,
                question,
                images,
                max_new_tokens=int(max_new_tokens),
                think=think,
                device=self.pipe._execution_device,
            ):
                answer += text
                yield answer
        except ValueError as error:  # InputError, and what the processor rejects
            raise user_error(error, {"text": "Question", "images": "Images"}) from None

    def generate(
        self,
        prompt: str,
        width: float = 1024,
        height: float = 1024,
        steps: float = 50,
        guidance: float = 5.0,
        seed: float = 0,
        count: float = 1,
        progress: Callable | None = None,
    ) -> list[PIL.Image.Image]:
        try:
            check_text(prompt, "Prompt", "describe the image to generate.")
            for value, label, minimum in ((steps, "Steps", 1), (guidance, "Guidance", 0), (count, "Images", 1)):
                check_number(value, label, minimum)
            return self.pipe(
                prompt,
                height=int(height),
                width=int(width),
                num_inference_steps=int(steps),
                guidance_scale=guidance,
                num_images_per_prompt=int(count),
                generator=torch.Generator().manual_seed(int(seed)),
                callback_on_step_end=step_reporter(progress, int(steps)),
            ).images
        except ValueError as error:
            raise user_error(error, GENERATE_FIELDS) from None

    def edit(
        self,
        image: PIL.Image.Image | str | None,
        instruction: str,
        steps: float = 50,
        guidance: float = 6.0,
        image_guidance: float = 1.5,
        seed: float = 0,
        width: float | None = 0,
        height: float | None = 0,
        progress: Callable | None = None,
    ) -> PIL.Image.Image:
        """The edited image, `width` x `height` where both are given (multiples of 16), else the edit pipeline's
        default size."""
        try:
            if image is None:
                raise InputError("Image is missing: upload the image to edit.")
            image = user_image(image).convert("RGB")
            check_text(instruction, "Instruction", "describe the edit to make.")
            checks = ((steps, "Steps", 1), (guidance, "Text guidance", 0), (image_guidance, "Image guidance", 0))
            for value, label, minimum in checks:
                check_number(value, label, minimum)
            height, width = check_edit_size(width, height, self.edit_pipe.size_multiple)
            return self.edit_pipe(
                image,
                instruction,
                height=height,
                width=width,
                num_inference_steps=int(steps),
                guidance_scale=guidance,
                image_guidance_scale=image_guidance,
                generator=torch.Generator().manual_seed(int(seed)),
                callback_on_step_end=step_reporter(progress, int(steps)),
            ).images[0]
        except ValueError as error:
            raise user_error(error, EDIT_FIELDS) from None


def step_reporter(progress: Callable | None, steps: int) -> Callable | None:
    """A `callback_on_step_end` that reports the denoising steps to a `gradio.Progress`."""
    if progress is None:
        return None

    def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
        progress((step + 1, steps), desc="Denoising", unit="steps")
        return {}

    return on_step_end


def uploaded_path(value, component):
    """
    The path of the file uploaded to an image `component`, from its unprocessed value: Gradio's own preprocessing of
    `gr.Image`, even with `type="filepath"`, opens the file with PIL, so a non-image or a decompression bomb would fail
    there, with a generic error and a server traceback, before the app's check. Gradio has already checked that the
    path is one of its uploads. A value without a path (pasted data) goes through Gradio's preprocessing as usual.
    """
    if value is None:
        return None
    if isinstance(value, dict) and value.get("path"):
        return value["path"]
    return component.preprocess(component.data_model.model_validate(value))


def build_app(pipe: OvisU1TextToImagePipeline, title: str = "Ovis-U1"):
    """
    The Gradio app on a loaded [`OvisU1TextToImagePipeline`]: tabs Chat, Generate and Edit, with queueing enabled.
    Returns the `gradio.Blocks`; `.launch()` serves it.
    """
    gr = import_gradio()
    app = OvisU1App(pipe)
    size_step = pipe.size_multiple
    model_event = dict(concurrency_limit=1, concurrency_id=MODEL_CONCURRENCY_ID)

    # Gradio finds a progress tracker by the default value of a parameter of the callback itself.
    def generate(prompt, width, height, steps, guidance, seed, count, progress=gr.Progress()):
        return app.generate(prompt, width, height, steps, guidance, seed, count, progress=progress)

    def edit(image, instruction, steps, guidance, image_guidance, seed, width, height, progress=gr.Progress()):
        image = uploaded_path(image, source)
        return app.edit(image, instruction, steps, guidance, image_guidance, seed, width, height, progress=progress)

    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"# {title}\nOne model that understands images, generates images from text and edits images from "
            "instructions."
        )
        with gr.Tab("Chat", id="chat", elem_id="chat-tab"):
            with gr.Row():
                with gr.Column():
                    chat_images = gr.Gallery(
                        label="Images (optional; several are numbered Image 1, Image 2, ...)",
                        type="filepath",  # checked like the command line's files, not decoded unchecked
                        file_types=["image"],
                        interactive=True,
                        columns=3,
                        height=260,
                        elem_id="chat-images",
                    )
                    question = gr.Textbox(label="Question", lines=2, elem_id="chat-question")
                    with gr.Accordion("Options", open=False):
                        max_new_tokens = gr.Slider(1, 4096, value=1024, step=1, label="Max new tokens")
                        think = gr.Checkbox(label="Think before answering", value=False)
                    ask = gr.Button("Ask", variant="primary", elem_id="chat-run")
                with gr.Column():
                    answer = gr.Textbox(label="Answer", lines=12, interactive=False, elem_id="chat-answer")
            chat_inputs = [chat_images, question, max_new_tokens, think]
            gr.on([ask.click, question.submit], app.chat, chat_inputs, answer, **model_event)

        with gr.Tab("Generate", id="generate", elem_id="generate-tab"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Prompt", lines=3, elem_id="generate-prompt")
                    with gr.Row():
                        width = gr.Slider(256, MAX_IMAGE_SIZE, value=1024, step=size_step, label="Width")
                        height = gr.Slider(256, MAX_IMAGE_SIZE, value=1024, step=size_step, label="Height")
                    steps = gr.Slider(1, 100, value=50, step=1, label="Steps")
                    guidance = gr.Slider(0, 15, value=5.0, step=0.5, label="Guidance")
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                        count = gr.Slider(1, 4, value=1, step=1, label="Images")
                    run_generate = gr.Button("Generate", variant="primary", elem_id="generate-run")
                    gr.Examples([[example] for example in GENERATE_EXAMPLES], [prompt])
                with gr.Column():
                    gallery = gr.Gallery(label="Images", format="png", columns=2, elem_id="generate-gallery")
            generate_inputs = [prompt, width, height, steps, guidance, seed, count]
            gr.on([run_generate.click, prompt.submit], generate, generate_inputs, gallery, **model_event)

        with gr.Tab("Edit", id="edit", elem_id="edit-tab"):
            with gr.Row():
                with gr.Column():
                    source = gr.Image(label="Image", type="filepath", image_mode=None, elem_id="edit-image")
                    instruction = gr.Textbox(label="Instruction", lines=2, elem_id="edit-instruction")
                    with gr.Row():
                        size_field = dict(
                            precision=0, minimum=0, step=size_step, info="0: the input's aspect ratio, about 1 megapixel"
                        )
                        edit_width = gr.Number(0, label="Width", elem_id="edit-width", **size_field)
                        edit_height = gr.Number(0, label="Height", elem_id="edit-height", **size_field)
                    edit_steps = gr.Slider(1, 100, value=50, step=1, label="Steps")
                    with gr.Row():
                        text_guidance = gr.Slider(0, 15, value=6.0, step=0.5, label="Text guidance")
                        image_guidance = gr.Slider(0, 5, value=1.5, step=0.1, label="Image guidance")
                    edit_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                    run_edit = gr.Button("Edit", variant="primary", elem_id="edit-run")
                with gr.Column():
                    edited = gr.Image(
                        label="Edited", type="pil", format="png", interactive=False, elem_id="edit-output"
                    )
            edit_inputs = [
                source, instruction, edit_steps, text_guidance, image_guidance, edit_seed, edit_width, edit_height
            ]
            # Unprocessed inputs: the image as its upload's path (`uploaded_path`); the other fields need no processing.
            gr.on([run_edit.click, instruction.submit], edit, edit_inputs, edited, preprocess=False, **model_event)

    demo.queue()
    return demo


def launch(
    pipe: OvisU1TextToImagePipeline,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    max_file_size: str | int | None = MAX_FILE_SIZE,
    **launch_kwargs,
):
    """Builds the app on a loaded pipeline and serves it at `http://host:port` (blocking unless
    `prevent_thread_lock=True`); `share=True` also opens a public Gradio link; uploads over `max_file_size` ("20MB",
    or bytes) are refused. Returns the `gradio.Blocks`."""
    demo = build_app(pipe)
    demo.launch(server_name=host, server_port=port, share=share, max_file_size=max_file_size, **launch_kwargs)
    return demo

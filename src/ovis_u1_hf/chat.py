# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""Streamed answers about images: one place that formats a question with its images and runs greedy generation."""

from collections.abc import Iterator
from threading import Thread

import PIL.Image
import torch
from transformers import TextIteratorStreamer


def stream_answer(
    model,
    processor,
    question: str,
    images: list[PIL.Image.Image] | None = None,
    max_new_tokens: int = 1024,
    think: bool = False,
    device: torch.device | str | None = None,
) -> Iterator[str]:
    """
    Yields the greedy answer of `model` (an [`OvisU1ForConditionalGeneration`]) to `question` about `images` piece by
    piece as it is generated. The images come before the question in one user message, numbered when there are
    several; `think` lets the model think before it answers.
    """
    images = list(images or [])
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    # The question is typed text: `<image>` or special tokens in it stay text.
    inputs = processor.encode_chat(
        [{"role": "user", "content": content}],
        images=images or None,
        add_generation_prompt=True,
        enable_thinking=think,
        return_tensors="pt",
    )
    inputs = inputs.to(device or model.device)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    errors = []

    def generate():
        # The streamer would wait forever for a failed generation: end it, and raise the error in the caller.
        try:
            with torch.inference_mode():  # inference mode is per thread
                model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)
        except BaseException as error:
            errors.append(error)
            streamer.end()

    thread = Thread(target=generate, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]

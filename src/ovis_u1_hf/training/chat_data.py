# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""Chat-format training data for the understanding model: JSONL reading, assistant-only labels, batching."""

import json
import os
from pathlib import Path

import torch
from PIL import Image


IGNORE_INDEX = -100


def load_chat_jsonl(path: str | os.PathLike) -> list[dict]:
    """
    Reads a JSONL file of conversations: one `{"messages": [...]}` per line, messages in the chat format
    (`{"role": ..., "content": str | [{"type": "text", "text": ...}, {"type": "image", "image": PATH}]}`).

    Relative image paths are resolved against the file's folder, so a data folder can be moved as a whole.
    """
    path = Path(path)
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        messages = record.get("messages") if isinstance(record, dict) else None
        if not messages or not any(m.get("role") == "assistant" for m in messages):
            raise ValueError(f"{path}:{number}: each line needs `messages` with at least one assistant turn.")
        for message in messages:
            if isinstance(message.get("content"), list):
                for item in message["content"]:
                    if item.get("type") == "image":
                        source = item.get("image", item.get("path"))
                        if not isinstance(source, str):
                            raise ValueError(f"{path}:{number}: image items need an `image` path.")
                        item["image"] = str(path.parent / source)
        examples.append({"messages": messages})
    return examples


def conversation_images(messages: list[dict]) -> list:
    """The images of a conversation's image items, in order, opened as RGB when given as paths."""
    images = []
    for message in messages:
        if isinstance(message.get("content"), list):
            for item in message["content"]:
                if item.get("type") == "image":
                    image = item.get("image", item.get("path"))
                    images.append(Image.open(image).convert("RGB") if isinstance(image, (str, os.PathLike)) else image)
    return images


def assistant_labels(processor, messages: list[dict], images: list | None = None) -> tuple[list[int], list[int]]:
    """
    Token ids of a whole conversation and its labels: the ids of what each assistant turn generates (its text and
    `<|im_end|>`), `-100` everywhere else (system and user turns, images, the assistant header and its empty think
    block, the newline after `<|im_end|>`).

    The spans come from the chat template itself rather than from searching its markers: the conversation up to an
    assistant turn, rendered with the generation prompt, is what the model sees before it answers; the same
    conversation with the answer appended adds the answer's tokens. Where tokenization merges across that boundary,
    supervision starts at the first token the two disagree on.
    """
    images = list(images or [])
    eos_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def encode(turns, add_generation_prompt=False):
        count = len(conversation_images(_without_image_payloads(turns)))
        output = processor.encode_chat(
            turns, images=images[:count] or None, add_generation_prompt=add_generation_prompt, truncation=False
        )
        return output["input_ids"][0]

    input_ids = encode(messages)
    labels = [IGNORE_INDEX] * len(input_ids)
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = encode(messages[:index], add_generation_prompt=True) if index else []
        answered = encode(messages[: index + 1])
        if answered != input_ids[: len(answered)]:
            raise ValueError("The chat template does not render a conversation's turns as a prefix of it.")
        start = next((i for i, (a, b) in enumerate(zip(prompt, answered)) if a != b), min(len(prompt), len(answered)))
        end = len(answered)
        # The template closes a turn with "<|im_end|>\n": the model stops at `<|im_end|>`, so the newline is not a
        # target.
        while end > start and answered[end - 1] != eos_id:
            end -= 1
        if end == start:
            raise ValueError(f"Assistant turn {index} renders without `<|im_end|>`: no target to learn.")
        labels[start:end] = answered[start:end]
    return input_ids, labels


def _without_image_payloads(messages):
    # Counting image items must not open the images.
    return [
        {
            "content": [{"type": item.get("type")} for item in m["content"]] if isinstance(m.get("content"), list) else ""
        }
        for m in messages
    ]


class ChatDataCollator:
    """
    Batches chat examples (`{"messages": [...]}`) for the transformers `Trainer`: the processor tokenizes the
    conversations with their images, padded on the RIGHT (the positions of the real tokens then do not depend on the
    batch, and no padding precedes a target), and `labels` keeps only the assistant tokens (see
    [`assistant_labels`]).

    Args:
        processor ([`OvisU1Processor`]): the model's processor.
        max_length (`int`, *optional*): longest sequence; longer ones keep their last tokens, as the processor cuts
            them. Defaults to the processor's `multimodal_max_length`.
    """

    def __init__(self, processor, max_length: int | None = None):
        self.processor = processor
        self.max_length = max_length or processor.multimodal_max_length

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        conversations = [example["messages"] for example in examples]
        images = [conversation_images(conversation) for conversation in conversations]
        labels = [assistant_labels(self.processor, c, i)[1] for c, i in zip(conversations, images)]
        batch = self.processor.encode_chat(
            conversations,
            images=images if any(images) else None,
            padding_side="right",
            truncation=self.max_length is not None,
            max_length=self.max_length,
            return_tensors="pt",
        )
        lengths = batch["attention_mask"].sum(-1).tolist()
        batch["labels"] = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        for row, (length, row_labels) in enumerate(zip(lengths, labels)):
            # Truncation keeps a sequence's last tokens, and so do its labels.
            batch["labels"][row, :length] = torch.tensor(row_labels[len(row_labels) - length :])
        return dict(batch)

# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""LoRA fine-tuning of Ovis-U1 with PEFT (the `train` extra): the understanding model with the transformers `Trainer`
(`chat_lora`), the image decoder with accelerate (`generation_lora`)."""

from .chat_data import ChatDataCollator, assistant_labels, load_chat_jsonl


__all__ = ["ChatDataCollator", "assistant_labels", "load_chat_jsonl"]

# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""Fine-tuning Ovis-U1 with PEFT and the transformers `Trainer` (the `train` extra)."""

from .chat_data import ChatDataCollator, assistant_labels, load_chat_jsonl


__all__ = ["ChatDataCollator", "assistant_labels", "load_chat_jsonl"]

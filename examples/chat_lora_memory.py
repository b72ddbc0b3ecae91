# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
Peak CPU memory of a few LoRA fine-tuning steps on a mid-size random model: the released depths (28 language-model
layers, 24 vision layers) and vocabulary (151936) at a quarter of the released widths.

    python examples/chat_lora_memory.py [--steps 4] [--batch-size 2] [--image-size 448] [--gradient-checkpointing]

The peak is the process's maximum resident set size (`getrusage`), read after loading the model and after training.
"""

import argparse
import json
import resource
import tempfile
from pathlib import Path

from PIL import Image

from ovis_u1_hf import OvisU1Processor
from ovis_u1_hf.conversion.released_layout import tiny_tokenizer
from ovis_u1_hf.modeling import OvisU1Config, OvisU1ForConditionalGeneration, OvisU1ImageProcessor
from ovis_u1_hf.training.chat_lora import main as train
from transformers import TrainingArguments


# transformers 5.24 renamed the option; older versions know only the old name.
CHECKPOINTING = next(n for n in ("activation_checkpointing", "gradient_checkpointing") if n in TrainingArguments.__dataclass_fields__)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def mid_size_config(processor) -> OvisU1Config:
    text = dict(
        model_type="qwen3", vocab_size=151936, hidden_size=512, intermediate_size=1536, num_hidden_layers=28,
        num_attention_heads=4, num_key_value_heads=2, head_dim=128, tie_word_embeddings=True,
    )  # fmt: skip
    vision = dict(
        hidden_size=256, intermediate_size=704, num_hidden_layers=24, num_attention_heads=2, image_size=448,
        window_size=112, fullatt_block_indexes=[7, 15, 23], vocab_size=8192,
    )  # fmt: skip
    return OvisU1Config(
        text_config=text,
        vision_config=vision,
        image_token_id=processor.image_token_id,
        visual_indicator_token_ids=[processor.image_start_token_id, processor.image_end_token_id],
    )


def run(arguments) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        processor = OvisU1Processor(OvisU1ImageProcessor(), tiny_tokenizer())
        OvisU1ForConditionalGeneration(mid_size_config(processor)).save_pretrained(folder / "model")
        processor.save_pretrained(folder / "model")
        lines = []
        for index in range(arguments.batch_size * arguments.steps):
            Image.new("RGB", (arguments.image_size,) * 2, (index * 40 % 256, 90, 160)).save(folder / f"{index}.png")
            content = [{"type": "image", "image": f"{index}.png"}, {"type": "text", "text": "what color is it?"}]
            answer = "the image is a plain color " * 4
            lines.append(json.dumps({"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]}))
        (folder / "train.jsonl").write_text("\n".join(lines))
        before = peak_mib()
        # fmt: off
        trainer = train([
            "--model", str(folder / "model"), "--data", str(folder / "train.jsonl"), "--output-dir", str(folder / "out"),
            "--max_steps", str(arguments.steps), "--per_device_train_batch_size", str(arguments.batch_size),
            "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--disable_tqdm", "true",
        ] + ([f"--{CHECKPOINTING}"] if arguments.gradient_checkpointing else []))
        # fmt: on
        model = trainer.model
        return {
            "parameters (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "trainable (M)": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2),
            "sequence length": len(trainer.data_collator([trainer.train_dataset[0]])["input_ids"][0]),
            "peak RSS before training (MiB)": round(before),
            "peak RSS after training (MiB)": round(peak_mib()),
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    print(json.dumps(run(parser.parse_args()), indent=1))

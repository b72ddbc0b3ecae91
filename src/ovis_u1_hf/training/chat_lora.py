# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
LoRA fine-tuning of the understanding model on chat data, with PEFT and the transformers `Trainer`.

    python -m ovis_u1_hf.training.chat_lora --model PATH --data train.jsonl --output-dir out \
        --num_train_epochs 3 --per_device_train_batch_size 4 --gradient_accumulation_steps 4 --learning_rate 2e-4

Every `TrainingArguments` field is an option (the `HfArgumentParser` way of the transformers examples); the options
below are the script's own. The adapter is saved to `--output-dir` and loads with
`OvisU1ForConditionalGeneration.from_pretrained(...).load_adapter(output_dir)`.
"""

import os
from contextlib import contextmanager
import warnings
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, get_peft_model
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from ..modeling import OvisU1ForConditionalGeneration, OvisU1Processor
from .chat_data import ChatDataCollator, load_chat_jsonl


LANGUAGE_MODEL_LINEARS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@dataclass
class ChatLoraArguments:
    model: str = field(metadata={"help": "A converted folder or Hub id (with text_encoder/ and processor/), or a "
                                         "folder holding the understanding model and its processor."})
    data: str = field(metadata={"help": "JSONL file, one {\"messages\": [...]} per line."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05)
    target_modules: str = field(
        default=LANGUAGE_MODEL_LINEARS,
        metadata={"help": "Comma-separated names of the language model's linear layers that get LoRA."},
    )
    train_vision: bool = field(
        default=False,
        metadata={"help": "Also put LoRA on the vision tower's linear layers of the same names (frozen otherwise)."},
    )
    max_length: int | None = field(default=None, metadata={"help": "Longest sequence; defaults to the processor's."})


@contextmanager
def peft_renamed_property_notice_ignored():
    """PEFT (up to 0.21) reads `is_gradient_checkpointing`, which transformers 5 renamed `is_activation_checkpointing`
    and warns about when read: the notice concerns PEFT's code, not ours or the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def lora_config(arguments: ChatLoraArguments) -> LoraConfig:
    names = "|".join(name.strip() for name in arguments.target_modules.split(",") if name.strip())
    towers = "language_model|vision_tower" if arguments.train_vision else "language_model"
    return LoraConfig(
        r=arguments.lora_r,
        lora_alpha=arguments.lora_alpha,
        lora_dropout=arguments.lora_dropout,
        # A regex rather than bare names: the vision tower has layers named like the language model's (`gate_proj`,
        # ...), and it stays frozen unless asked for.
        target_modules=rf"model\.(?:{towers})\.layers\.\d+\.[\w.]*(?:{names})",
        task_type="CAUSAL_LM",
    )


def load_model_and_processor(path: str, **kwargs):
    # A converted folder holds the pipeline's components; the understanding model is its text encoder.
    local = os.path.isdir(path)
    nested = os.path.isdir(os.path.join(path, "text_encoder")) if local else True
    model_sub, processor_sub = ("text_encoder", "processor") if nested else ("", "")
    model = OvisU1ForConditionalGeneration.from_pretrained(path, subfolder=model_sub, **kwargs)
    processor = OvisU1Processor.from_pretrained(path, subfolder=processor_sub)
    return model, processor


def build_trainer(model, processor, train_dataset, arguments: ChatLoraArguments, training_args: TrainingArguments):
    """The PEFT model and its `Trainer`; the model is wrapped in place of the given one."""
    model.config.use_cache = False
    with peft_renamed_property_notice_ignored():
        peft_model = get_peft_model(model, lora_config(arguments))
    # The collator's columns are the model's inputs; the Trainer must not drop `messages` before it sees them.
    training_args.remove_unused_columns = False
    return Trainer(
        model=peft_model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=ChatDataCollator(processor, max_length=arguments.max_length),
        processing_class=processor,
    )


def main(argv=None):
    parser = HfArgumentParser((ChatLoraArguments, TrainingArguments))
    arguments, training_args = parser.parse_args_into_dataclasses(args=argv)
    # Before the adapter is made: `--seed` also sets its initial weights, as in the transformers examples.
    set_seed(training_args.seed)
    dtype = torch.bfloat16 if training_args.bf16 else torch.float32
    model, processor = load_model_and_processor(arguments.model, dtype=dtype)
    # transformers 5.24 renamed the option `activation_checkpointing` (the old name mirrors it).
    if getattr(training_args, "activation_checkpointing", None) or training_args.gradient_checkpointing:
        # PEFT freezes the embeddings: the checkpointed blocks need inputs that require grad.
        model.enable_input_require_grads()
    trainer = build_trainer(model, processor, load_chat_jsonl(arguments.data), arguments, training_args)
    trainer.model.print_trainable_parameters()
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    processor.save_pretrained(training_args.output_dir)
    return trainer


if __name__ == "__main__":
    main()

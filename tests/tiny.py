"""Tiny, offline stand-ins for the released tokenizer and image processor, for fast tests."""

import json

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from ovis_u1_hf.modeling.image_processing_ovis_u1 import OvisU1ImageProcessor


SPECIAL_TOKENS = ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
THINK_TOKENS = ["<think>", "</think>"]

# Chat-shaped text, so that BPE learns merges such as ">\n" that cross an `<image>` marker's border.
_CORPUS = [
    "<image>\nDescribe the image by detailing the color, shape, size, texture, quantity, text, and spatial "
    "relationships of the objects:",
    "<image>\nGenerate an image.",
    "Image 1: <image>\nImage 2: <image>\nWhat is the difference between the two images?",
    "<image>\nWhat is in the picture? A red cat sits on a blue mat.",
    "user\nassistant\nsystem\nYou are a helpful assistant.",
    "Make the sky purple and add a small yellow moon above the old house.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>-_=+*/\\|@#$%^&~`",
]


def tiny_tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE tokenizer with Qwen's special tokens and pre-tokenization, trained in memory.

    Training on the fixed corpus is deterministic, so the ids are the same in every process. Regular tokens take ids
    0-399, then `<|im_end|>` (eos), `<|endoftext|>` (pad), the other special tokens and `<think>`, `</think>`.
    """
    bpe = Tokenizer(BPE())
    bpe.normalizer = normalizers.NFC()
    # The released (Qwen3) tokenizer's pre-tokenization: the split regex, then bytes as printable characters.
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    merges = [tuple(merge) for merge in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe.get_vocab(), merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.add_tokens(THINK_TOKENS)
    return tokenizer


def tiny_image_processor(**kwargs) -> OvisU1ImageProcessor:
    """An image processor with a small pixel budget: 4 to 16 merged visual tokens per image."""
    kwargs.setdefault("min_pixels", 28 * 28 * 4)
    kwargs.setdefault("max_pixels", 28 * 28 * 16)
    return OvisU1ImageProcessor(**kwargs)

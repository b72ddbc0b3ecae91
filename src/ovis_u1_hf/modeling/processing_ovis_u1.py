# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""Processor of Ovis-U1: chat formatting, chunked tokenization with expanded image tokens, and image processing."""

import copy
import re

import numpy as np
import torch
from transformers import AutoTokenizer
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.utils import logging

from .configuration_ovis_u1 import check_pretrained_path
from .image_processing_ovis_u1 import OvisU1ImageProcessorKwargs, image_processor_class


logger = logging.get_logger(__name__)


# The released Qwen3 conversation format. User turns render their images first-come as "<image>\n", numbered
# ("Image 1: <image>\n", ...) when a message holds several. Assistant turns carry the empty think block unless
# thinking is enabled. No default system prompt, no BOS. What the assistant says, up to its `<|im_end|>`, is marked as
# generated (`{% generation %}`) for `return_assistant_tokens_mask`; the empty think block belongs to the prompt, as
# the generation prompt holds it.
CHAT_TEMPLATE = (
    r'{%- set think = "" if enable_thinking is defined and enable_thinking else "<think>\n\n</think>\n\n" -%}'
    r"{%- macro render_content(content) -%}"
    r"{%- if content is string -%}"
    r"{{- content -}}"
    r"{%- else -%}"
    r'{%- set num_images = content | selectattr("type", "equalto", "image") | list | length -%}'
    r"{%- set image = namespace(index=0) -%}"
    r"{%- for item in content -%}"
    r'{%- if item["type"] == "image" -%}'
    r"{%- set image.index = image.index + 1 -%}"
    r'{%- if num_images > 1 -%}{{- "Image " ~ image.index ~ ": " -}}{%- endif -%}'
    r'{{- "<image>\n" -}}'
    r'{%- elif item["type"] == "text" -%}'
    r'{{- item["text"] -}}'
    r"{%- endif -%}"
    r"{%- endfor -%}"
    r"{%- endif -%}"
    r"{%- endmacro -%}"
    r"{%- for message in messages -%}"
    r'{{- "<|im_start|>" + message["role"] + "\n" -}}'
    r'{%- if message["role"] == "assistant" -%}'
    r"{{- think -}}"
    r'{%- generation -%}{{- render_content(message["content"]) + "<|im_end|>" -}}{%- endgeneration -%}'
    r'{{- "\n" -}}'
    r"{%- else -%}"
    r'{{- render_content(message["content"]) + "<|im_end|>\n" -}}'
    r"{%- endif -%}"
    r"{%- endfor -%}"
    r'{%- if add_generation_prompt -%}{{- "<|im_start|>assistant\n" + think -}}{%- endif -%}'
)

# Stands for the k-th message text while a conversation is rendered by `encode_chat`: private-use characters, which
# the chat template never writes.
_TEXT_SLOT = re.compile("\ue000([0-9]+)\ue001")


class OvisU1ProcessorKwargs(ProcessingKwargs, total=False):
    images_kwargs: OvisU1ImageProcessorKwargs


class OvisU1Processor(ProcessorMixin):
    r"""
    Constructs an Ovis-U1 processor from an [`OvisU1ImageProcessor`] (or [`OvisU1ImageProcessorFast`]) and a Qwen2
    tokenizer (the released Qwen3 tokenizer). `from_pretrained` picks the image processor as `AutoImageProcessor`
    does, by `backend` (or `use_fast`).

    In the text, each image is marked by the literal `<image>`. The text is split on the markers and each chunk is
    tokenized alone (as the released model does: tokenizing the whole string would merge tokens across the markers),
    and each image becomes `<|vision_start|>`, `t * grid_h * grid_w // hidden_stride**2` times `<|image_pad|>` (the
    positions of its visual tokens), `<|vision_end|>`.

    Args:
        image_processor ([`OvisU1ImageProcessor`] or [`OvisU1ImageProcessorFast`], *optional*):
            The image processor.
        tokenizer ([`Qwen2Tokenizer`], *optional*):
            The tokenizer; it must know `<|vision_start|>`, `<|image_pad|>` and `<|vision_end|>`.
        chat_template (`str`, *optional*):
            A Jinja template for [`~ProcessorMixin.apply_chat_template`]; defaults to the released conversation
            format (`CHAT_TEMPLATE`), which takes `enable_thinking` (default `False`).
        multimodal_max_length (`int`, *optional*, defaults to 2048):
            Longest token sequence (visual tokens included); longer ones keep their last tokens. `None` disables it.
            A call overrides it with `truncation=True, max_length=N`, or turns it off with `truncation=False`.
    """

    valid_processor_kwargs = OvisU1ProcessorKwargs
    # Sequences are LEFT-padded to the longest, as generation needs.
    text_kwargs = {"padding": True, "padding_side": "left"}

    image_token = "<image>"
    image_start_token = "<|vision_start|>"
    image_pad_token = "<|image_pad|>"
    image_end_token = "<|vision_end|>"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, multimodal_max_length=2048, **kwargs):
        ids = tokenizer.convert_tokens_to_ids([self.image_start_token, self.image_pad_token, self.image_end_token])
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise ValueError(
                f"The tokenizer must know {self.image_start_token}, {self.image_pad_token} and {self.image_end_token}."
            )
        self.image_start_token_id, self.image_token_id, self.image_end_token_id = ids
        self.multimodal_max_length = multimodal_max_length
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        return super().from_pretrained(check_pretrained_path(pretrained_model_name_or_path), *args, **kwargs)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # The image processor is this module's sibling: load it directly. Through AutoImageProcessor it would ask for
        # `trust_remote_code` again, which diffusers does not pass when it loads this processor as a component. Its
        # class follows AutoImageProcessor's rule for `backend` (or `use_fast`).
        image_processor_cls = image_processor_class(kwargs.pop("backend", None), kwargs.pop("use_fast", None))
        image_processor = image_processor_cls.from_pretrained(pretrained_model_name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return [image_processor, tokenizer]

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        **kwargs: Unpack[OvisU1ProcessorKwargs],
    ) -> BatchFeature:
        """
        Tokenizes texts with their images into padded sequences, and processes the images.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, a list of them, or a list of lists, *optional*):
                The images of the `<image>` markers: one image, a flat list consumed in marker order across the
                batch, or one list per text.
            text (`str` or `list[str]`):
                The texts (already chat-formatted, see [`~ProcessorMixin.apply_chat_template`]), with one `<image>`
                marker per image.
            **kwargs:
                Routed as in every transformers processor, flat or nested (`text_kwargs={...}`,
                `images_kwargs={...}`; the same argument given both ways is an error). Text: `padding` (default
                `True`: to the longest), `padding_side` (default `"left"`), `max_length`, `pad_to_multiple_of`,
                `truncation` (see below), `return_attention_mask`. Images: the image processor's settings, e.g.
                `max_pixels`. `return_tensors`: `"pt"`, `"np"`, or `None` (default) for lists.

        Returns:
            [`BatchFeature`]: with
            - **input_ids** -- `(batch_size, sequence_length)`, padded with the pad token.
            - **attention_mask** -- `(batch_size, sequence_length)`, 0 on padding.
            - **pixel_values** -- float32 `(num_patches, patch_dim)` of the images in the kept sequences (only when
              there are images).
            - **image_grid_thw** -- int64 `(num_images, 3)`, one row per image in `pixel_values`.

            A sequence longer than `multimodal_max_length` (or, with `truncation=True`, `max_length`) keeps its
            last tokens, with a warning; the images left without any `<|image_pad|>` token are dropped from
            `pixel_values`. An image cut in part is kept whole: its first `<|image_pad|>` run is then shorter than
            its visual tokens, and the model uses that image's LAST tokens.
        """
        if text is None:
            raise ValueError("`text` is required: mark each image with `<image>` in it.")
        texts = self._check_texts(text)
        chunk_ids, chunk_offsets = [], []
        for sample in texts:
            chunks = sample.split(self.image_token)
            encoded = self.tokenizer(chunks, add_special_tokens=False, return_offsets_mapping=self.tokenizer.is_fast)
            chunk_ids.append(encoded["input_ids"])
            if self.tokenizer.is_fast:
                # Offsets into the whole text: each chunk starts after the previous chunks and their markers.
                starts = np.cumsum([0] + [len(chunk) + len(self.image_token) for chunk in chunks[:-1]]).tolist()
                spans = zip(encoded["offset_mapping"], starts)
                chunk_offsets.append([[(a + start, b + start) for a, b in offsets] for offsets, start in spans])
        return self._build(chunk_ids, images, chunk_offsets=chunk_offsets or None, **kwargs)

    def encode_chat(
        self,
        conversations: list[dict] | list[list[dict]],
        images=None,
        add_generation_prompt: bool = False,
        enable_thinking: bool = False,
        **kwargs: Unpack[OvisU1ProcessorKwargs],
    ) -> BatchFeature:
        """
        Formats conversations with the chat template and tokenizes them as [`~OvisU1Processor.__call__`] does, but
        keeps the text of the messages literal: an `<image>`, `<|im_end|>` or any other special token typed in it is
        tokenized as the characters it is made of, never as an image marker or a control token. The images are the
        `{"type": "image"}` items of the messages. Use it for text that users type; build prompts by hand with
        [`~ProcessorMixin.apply_chat_template`] and `__call__` only from trusted text.

        Args:
            conversations (`list[dict]` or `list[list[dict]]`):
                One conversation (a list of messages) or a batch of them.
            images (*optional*):
                As for `__call__`: the images of the image items, in order.
            add_generation_prompt (`bool`, defaults to `False`):
                End with the assistant prefix.
            enable_thinking (`bool`, defaults to `False`):
                Leave out the empty think block of the assistant turns.
            **kwargs:
                As for `__call__`.

        Returns:
            [`BatchFeature`]: as `__call__`.
        """
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        if not conversations or not all(isinstance(c, (list, tuple)) and c for c in conversations):
            raise ValueError("`conversations` must be a non-empty list of messages, or a list of such lists.")
        chunk_ids = []
        for conversation in conversations:
            conversation, texts = self._with_text_slots(conversation)
            rendered = self.apply_chat_template(
                conversation, add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking
            )
            chunk_ids.append(self._tokenize_with_literals(rendered, texts))
        return self._build(chunk_ids, images, **kwargs)

    @staticmethod
    def _check_texts(text) -> list[str]:
        if isinstance(text, str):
            texts = [text]
        elif isinstance(text, (list, tuple)):
            texts = list(text)
        else:
            raise ValueError(f"`text` must be a string or a non-empty list of strings, got {type(text).__name__}.")
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("`text` must be a string or a non-empty list of strings.")
        if not all(texts):
            # An empty text has no token to attend to: it would come out as an empty, float-typed sequence.
            raise ValueError("`text` must not be empty: give each sequence some text or an `<image>` marker.")
        return texts

    @staticmethod
    def _with_text_slots(conversation: list[dict]) -> tuple[list[dict], list[str]]:
        """A copy of `conversation` whose texts are replaced by slots, and the texts in slot order."""
        conversation, texts = copy.deepcopy(list(conversation)), []

        def slot(text):
            if not isinstance(text, str):
                raise ValueError(f"Message texts must be strings, got {type(text).__name__}.")
            texts.append(text)
            return f"\ue000{len(texts) - 1}\ue001"

        for message in conversation:
            if isinstance(message.get("content"), str):
                message["content"] = slot(message["content"])
            else:
                for item in message.get("content") or []:
                    if item.get("type") == "text":
                        item["text"] = slot(item.get("text"))
        return conversation, texts

    def _tokenize_with_literals(self, rendered: str, texts: list[str]) -> list[list[int]]:
        """
        Token ids of each `<image>`-separated chunk of `rendered`, where only the template's own text holds markers
        and special tokens; the slotted `texts` are literal. Text between two special tokens is tokenized as one
        string, template and message text together, exactly as the tokenizer does when the text holds no special
        token: ordinary prompts get the same ids as through `__call__`.
        """
        added = sorted((t.content for t in self.tokenizer.added_tokens_decoder.values()), key=len, reverse=True)
        live = re.compile("|".join(re.escape(token) for token in [self.image_token, *added]))
        chunks, ids, plain = [], [], []
        position = 0
        pieces = []
        for match in _TEXT_SLOT.finditer(rendered):
            pieces += [(rendered[position : match.start()], False), (texts[int(match.group(1))], True)]
            position = match.end()
        pieces.append((rendered[position:], False))
        for piece, literal in pieces:
            if literal:
                plain.append(piece)
                continue
            start = 0
            for match in live.finditer(piece):
                plain.append(piece[start : match.start()])
                ids += self._tokenize_literal("".join(plain))
                plain = []
                if match.group() == self.image_token:
                    chunks.append(ids)
                    ids = []
                else:
                    ids.append(self.tokenizer.convert_tokens_to_ids(match.group()))
                start = match.end()
            plain.append(piece[start:])
        ids += self._tokenize_literal("".join(plain))
        return chunks + [ids]

    def _tokenize_literal(self, text: str) -> list[int]:
        """Ids of `text` with no added token recognised (special or not, e.g. `<think>`): normalisation,
        pre-tokenization and the subword model, the steps the tokenizer applies between added tokens."""
        if not text:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            # Tokenizers without a `tokenizers` backend: special tokens stay text; non-special added ones may not.
            return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        words = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer is not None else [(text, None)]
        return [token.id for word, _ in words for token in backend.model.tokenize(word)]

    def _build(self, chunk_ids: list[list[list[int]]], images, chunk_offsets=None, **kwargs) -> BatchFeature:
        """
        Expands the images between the token chunks of each text, truncates, pads, and processes the images. With
        `chunk_offsets` (character spans of the chunks' tokens in their text), `return_offsets_mapping` is honoured:
        image tokens, like padding, have empty spans.
        """
        if any(kwargs.get(modality) is not None for modality in ("videos", "audio")):
            raise ValueError("Ovis-U1 takes images and text only.")
        if "multimodal_max_length" in kwargs:
            raise ValueError(
                "multimodal_max_length is a setting of the processor (saved with it); for one call, pass "
                "truncation=True, max_length=N, or truncation=False."
            )
        output_kwargs = self._merge_kwargs(
            OvisU1ProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        text_kwargs, images_kwargs = output_kwargs["text_kwargs"], output_kwargs["images_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None)
        images_kwargs.pop("return_tensors", None)
        return_offsets = text_kwargs.pop("return_offsets_mapping", False)
        if return_offsets and chunk_offsets is None:
            raise ValueError("return_offsets_mapping needs a fast tokenizer, and text given to `__call__`.")
        # The merged sequence is cut as the released model cuts it (keeping the last tokens, images counted), so
        # truncation happens here rather than in the tokenizer.
        truncation = text_kwargs.pop("truncation", None)
        if truncation is None:
            max_length = self.multimodal_max_length
        elif truncation in (False, "do_not_truncate"):
            max_length = None
        else:
            max_length = text_kwargs.get("max_length") or self.multimodal_max_length
        images_per_text = self._images_per_text(images, [len(chunks) - 1 for chunks in chunk_ids])

        flat_images = [image for images in images_per_text for image in images]
        if flat_images:
            # numpy arrays from OvisU1ImageProcessor, torch tensors from OvisU1ImageProcessorFast.
            image_inputs = self.image_processor(flat_images, return_tensors=None, **images_kwargs)
            image_grid_thw = image_inputs["image_grid_thw"]
            num_rows = image_grid_thw.prod(-1).tolist()
            hidden_stride = images_kwargs.get("hidden_stride", self.image_processor.hidden_stride)
            num_tokens = [rows // hidden_stride**2 for rows in num_rows]
            row_ends = np.cumsum(num_rows).tolist()

        sequences, spans, kept_images, next_image = [], [], [], 0
        for index, chunks in enumerate(chunk_ids):
            ids, last_pads = list(chunks[0]), []
            offsets = list(chunk_offsets[index][0]) if chunk_offsets else []
            for number, chunk in enumerate(chunks[1:], start=1):
                n = num_tokens[next_image]
                ids += [self.image_start_token_id] + [self.image_token_id] * n + [self.image_end_token_id]
                last_pads.append((next_image, len(ids) - 2))
                ids += chunk
                if chunk_offsets:
                    offsets += [(0, 0)] * (n + 2) + list(chunk_offsets[index][number])
                next_image += 1
            cut = 0 if max_length is None else max(0, len(ids) - max_length)
            spans.append(offsets[cut:])
            kept = [image for image, last_pad in last_pads if last_pad >= cut]
            if cut:
                logger.warning(
                    f"Sequence {index} is {len(ids)} tokens long, longer than the maximum length {max_length}: "
                    f"keeping its last {max_length} tokens ({len(last_pads) - len(kept)} image(s) dropped)."
                )
            sequences.append(ids[cut:])
            kept_images += kept

        text_kwargs.pop("return_text_replacement_offsets", None)  # offsets are into the text as given
        padding = text_kwargs.get("padding", True)
        padded = self.tokenizer.pad(
            {"input_ids": sequences},
            padding=padding,
            max_length=text_kwargs.get("max_length") if padding == "max_length" else None,
            pad_to_multiple_of=text_kwargs.get("pad_to_multiple_of"),
            padding_side=text_kwargs.get("padding_side", "left"),
            return_attention_mask=text_kwargs.get("return_attention_mask", True),
        )
        data = dict(padded)
        if return_offsets:
            left = text_kwargs.get("padding_side", "left") == "left"
            data["offset_mapping"] = [
                [(0, 0)] * (len(ids) - len(span)) * left + span + [(0, 0)] * (len(ids) - len(span)) * (not left)
                for ids, span in zip(data["input_ids"], spans)
            ]
        if kept_images:
            pixel_values = image_inputs["pixel_values"]
            rows = [pixel_values[row_ends[i] - num_rows[i] : row_ends[i]] for i in kept_images]
            data["pixel_values"] = torch.cat(rows) if isinstance(pixel_values, torch.Tensor) else np.concatenate(rows)
            data["image_grid_thw"] = image_grid_thw[kept_images]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _images_per_text(self, images, num_markers: list[int]) -> list[list]:
        """Splits `images` over the texts by their `<image>` markers; a count mismatch raises before any image work."""
        if images is None:
            images = []
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if images and all(isinstance(item, (list, tuple)) for item in images):
            per_text = [list(item) for item in images]
            if [len(item) for item in per_text] != num_markers:
                raise ValueError(
                    f"The texts hold {num_markers} `<image>` markers but {[len(item) for item in per_text]} images "
                    "were given per text."
                )
            return per_text
        if len(images) != sum(num_markers):
            raise ValueError(
                f"The text holds {sum(num_markers)} `<image>` marker(s) (per text: {num_markers}) but {len(images)} "
                "image(s) were given."
            )
        starts = np.cumsum([0] + num_markers).tolist()
        return [list(images[start:end]) for start, end in zip(starts, starts[1:])]


__all__ = ["CHAT_TEMPLATE", "OvisU1Processor", "OvisU1ProcessorKwargs"]

OvisU1Processor.register_for_auto_class("AutoProcessor")

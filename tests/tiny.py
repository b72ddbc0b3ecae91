"""Tiny, offline stand-ins for the released tokenizer and image processor, for fast tests."""

from ovis_u1_hf.conversion.released_layout import SPECIAL_TOKENS, THINK_TOKENS, tiny_tokenizer  # noqa: F401
from ovis_u1_hf.modeling.image_processing_ovis_u1 import OvisU1ImageProcessor


def tiny_image_processor(**kwargs) -> OvisU1ImageProcessor:
    """An image processor with a small pixel budget: 4 to 16 merged visual tokens per image."""
    kwargs.setdefault("min_pixels", 28 * 28 * 4)
    kwargs.setdefault("max_pixels", 28 * 28 * 16)
    return OvisU1ImageProcessor(**kwargs)

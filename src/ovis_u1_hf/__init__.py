"""Ovis-U1 for transformers and diffusers: image understanding, text-to-image generation and image editing.

Importing the package registers the understanding classes with the transformers Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .modeling import (
    OvisU1Config,
    OvisU1ForConditionalGeneration,
    OvisU1Model,
    OvisU1PreTrainedModel,
    OvisU1VisionConfig,
    OvisU1VisionModel,
)


DEFAULT_MODEL_ID = "AIDC-AI/Ovis-U1-3B"

AutoConfig.register(OvisU1Config.model_type, OvisU1Config, exist_ok=True)
AutoConfig.register(OvisU1VisionConfig.model_type, OvisU1VisionConfig, exist_ok=True)
AutoModel.register(OvisU1Config, OvisU1ForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(OvisU1Config, OvisU1ForConditionalGeneration, exist_ok=True)

__all__ = [
    "DEFAULT_MODEL_ID",
    "OvisU1Config",
    "OvisU1ForConditionalGeneration",
    "OvisU1Model",
    "OvisU1PreTrainedModel",
    "OvisU1VisionConfig",
    "OvisU1VisionModel",
]

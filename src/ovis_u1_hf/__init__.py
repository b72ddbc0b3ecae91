"""Ovis-U1 for transformers and diffusers: image understanding, text-to-image generation and image editing.

Importing the package registers the understanding classes with the transformers Auto classes, and makes the
pipeline classes load their components from the package.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .modeling import (
    IMAGE_PROCESSOR_BACKENDS,
    OvisU1Config,
    OvisU1ForConditionalGeneration,
    OvisU1ImageProcessor,
    OvisU1ImageProcessorFast,
    OvisU1Model,
    OvisU1PreTrainedModel,
    OvisU1Processor,
    OvisU1VisionConfig,
    OvisU1VisionModel,
)
from .pipelines import OvisU1EditPipeline, OvisU1TextToImagePipeline, OvisU1Transformer2DModel


DEFAULT_MODEL_ID = "AIDC-AI/Ovis-U1-3B"

AutoConfig.register(OvisU1Config.model_type, OvisU1Config, exist_ok=True)
AutoConfig.register(OvisU1VisionConfig.model_type, OvisU1VisionConfig, exist_ok=True)
AutoModel.register(OvisU1Config, OvisU1ForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(OvisU1Config, OvisU1ForConditionalGeneration, exist_ok=True)
# The PIL processor as "pil", the torch one as "torchvision": the backend names `backend=` (and `use_fast`) resolve to.
AutoImageProcessor.register(OvisU1Config, image_processor_classes=dict(IMAGE_PROCESSOR_BACKENDS), exist_ok=True)
AutoProcessor.register(OvisU1Config, OvisU1Processor, exist_ok=True)

__all__ = [
    "DEFAULT_MODEL_ID",
    "OvisU1Config",
    "OvisU1EditPipeline",
    "OvisU1ForConditionalGeneration",
    "OvisU1ImageProcessor",
    "OvisU1ImageProcessorFast",
    "OvisU1Model",
    "OvisU1PreTrainedModel",
    "OvisU1Processor",
    "OvisU1TextToImagePipeline",
    "OvisU1Transformer2DModel",
    "OvisU1VisionConfig",
    "OvisU1VisionModel",
]

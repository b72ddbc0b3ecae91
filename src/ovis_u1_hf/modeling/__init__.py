from .configuration_ovis_u1 import OvisU1Config, OvisU1VisionConfig
from .image_processing_ovis_u1 import (
    IMAGE_PROCESSOR_BACKENDS,
    OvisU1ImageProcessor,
    OvisU1ImageProcessorFast,
    fit_image,
    smart_resize,
)
from .modeling_ovis_u1 import (
    OvisU1ForConditionalGeneration,
    OvisU1Model,
    OvisU1PreTrainedModel,
    OvisU1VisionModel,
)
from .processing_ovis_u1 import OvisU1Processor


__all__ = [
    "IMAGE_PROCESSOR_BACKENDS",
    "OvisU1Config",
    "OvisU1VisionConfig",
    "OvisU1ForConditionalGeneration",
    "OvisU1ImageProcessor",
    "OvisU1ImageProcessorFast",
    "OvisU1Model",
    "OvisU1PreTrainedModel",
    "OvisU1Processor",
    "OvisU1VisionModel",
    "fit_image",
    "smart_resize",
]

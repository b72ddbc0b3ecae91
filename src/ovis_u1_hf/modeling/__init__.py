from .configuration_ovis_u1 import OvisU1Config, OvisU1VisionConfig
from .modeling_ovis_u1 import (
    OvisU1ForConditionalGeneration,
    OvisU1Model,
    OvisU1PreTrainedModel,
    OvisU1VisionModel,
)


__all__ = [
    "OvisU1Config",
    "OvisU1VisionConfig",
    "OvisU1ForConditionalGeneration",
    "OvisU1Model",
    "OvisU1PreTrainedModel",
    "OvisU1VisionModel",
]

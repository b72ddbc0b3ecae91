from .pipeline_ovis_u1 import MAX_IMAGE_SIZE
from .pipeline_ovis_u1_edit import OvisU1EditPipeline
from .pipeline_ovis_u1_text_to_image import OvisU1TextToImagePipeline
from .transformer_ovis_u1 import OvisU1Transformer2DModel


__all__ = ["MAX_IMAGE_SIZE", "OvisU1EditPipeline", "OvisU1TextToImagePipeline", "OvisU1Transformer2DModel"]

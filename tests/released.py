"""Tiny random checkpoints in the layout of the released AIDC-AI/Ovis-U1-3B (SPEC 2-3): the package's builder, which
`ovis-u1 demo` uses too."""

from ovis_u1_hf.conversion.released_layout import (  # noqa: F401
    IMAGE_MEAN,
    build_released,
    random_tensors,
    released_config,
    released_shapes,
    write_released,
)

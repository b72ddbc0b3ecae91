# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""The README.md model card of a converted folder: metadata through `ModelCardData`, text from a Jinja template."""

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .. import DEFAULT_MODEL_ID


# The package is not on PyPI yet: it installs from a clone of its repository, as the project README's quickstart does.
INSTALL = (
    "The `ovis_u1_hf` classes come from the `ovis-u1-hf` package. It is not published on PyPI yet: install it from a "
    "clone of its repository with `pip install -e .` (run in the clone)."
)

DIFFUSERS_CARD = """---
{{ card_data }}
---

# Ovis-U1-3B for diffusers and transformers

[Ovis-U1-3B]({{ base_url }}) — one model that understands images, generates images from text and edits images from
instructions — as native `diffusers` / `transformers` code (converted by `ovis-u1-hf`): current library releases, CPU
and GPU, `device_map` and offloading, selectable attention backends, no required flash-attn.

**Weights:** {{ source }} Converting renames and re-lays them out only (fused projections split, the final
modulation's halves swapped): the converted model computes what its source computes.

| Folder | What it holds |
| --- | --- |
| `text_encoder/` | `OvisU1ForConditionalGeneration`: vision encoder, visual tokenizer, Qwen3 language model |
| `processor/` | `OvisU1Processor`: tokenizer, image processor, chat template |
| `transformer/` | `OvisU1Transformer2DModel`: token refiner and MMDiT decoder |
| `vae/` | `AutoencoderKL` |
| `scheduler/` | `FlowMatchEulerDiscreteScheduler`{{ shift_note }} |

## Install

{{ install }}

## Text to image

```python
import torch
from ovis_u1_hf import OvisU1TextToImagePipeline

pipe = OvisU1TextToImagePipeline.from_pretrained("{{ repo }}", dtype=torch.bfloat16).to("cuda")
image = pipe("a red cat sitting on a blue mat", height=1024, width=1024, guidance_scale=5.0,
             generator=torch.Generator().manual_seed(0)).images[0]
image.save("cat.png")
```

## Image editing

```python
import torch
from PIL import Image
from ovis_u1_hf import OvisU1EditPipeline

pipe = OvisU1EditPipeline.from_pretrained("{{ repo }}", dtype=torch.bfloat16).to("cuda")
edited = pipe(Image.open("cat.png"), "make the mat green", guidance_scale=6.0, image_guidance_scale=1.5,
              generator=torch.Generator().manual_seed(0)).images[0]
```

## Without the package: remote code

The folder carries its code, so `trust_remote_code=True` loads it where `ovis-u1-hf` is not installed:

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{{ repo }}", trust_remote_code=True)  # text to image
edit = DiffusionPipeline.from_pretrained("{{ repo }}", trust_remote_code=True, custom_pipeline="pipeline_ovis_u1_edit")
```

## Understanding (chat about images)

```python
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{{ repo }}", subfolder="text_encoder", trust_remote_code=True, dtype=torch.bfloat16)
processor = AutoProcessor.from_pretrained("{{ repo }}", subfolder="processor", trust_remote_code=True)
content = [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]
messages = [{"role": "user", "content": content}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=[Image.open("cat.png")], text=prompt, return_tensors="pt").to(model.device)
output = model.generate(**inputs, max_new_tokens=256, do_sample=False)
print(processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
```

## License

Apache-2.0, as the released model.
"""

TRANSFORMERS_CARD = """---
{{ card_data }}
---

# Ovis-U1-3B understanding model for transformers

The understanding half of [Ovis-U1-3B]({{ base_url }}) (vision encoder, visual tokenizer, Qwen3 language model) as native
`transformers` code, converted by `ovis-u1-hf`. The image generator is not included (convert with `--format diffusers` for it).

**Weights:** {{ source }} Converting renames them only, values unchanged.

```python
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{{ repo }}", trust_remote_code=True, dtype=torch.bfloat16)
processor = AutoProcessor.from_pretrained("{{ repo }}", trust_remote_code=True)
content = [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]
messages = [{"role": "user", "content": content}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=[Image.open("cat.png")], text=prompt, return_tensors="pt").to(model.device)
output = model.generate(**inputs, max_new_tokens=256, do_sample=False)
print(processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
```

With `ovis-u1-hf` installed (`import ovis_u1_hf`), `trust_remote_code` is not needed. {{ install }}

## License

Apache-2.0, as the released model.
"""


def describe_source(source: str, random_weights: bool) -> tuple[str, str | None]:
    """What the card says the weights are, and the Hub id to record as `base_model` (None for a local folder)."""
    if random_weights:
        return (
            "RANDOM, not a trained model: converted from a small random checkpoint in the released layout (the one "
            "`ovis-u1 demo` builds), for trying the code only. Outputs are noise.",
            None,
        )
    if Path(source).expanduser().is_dir():
        return f"Converted from a local checkpoint folder in the released layout (`{Path(source).name}`).", None
    return f"The released weights of [`{source}`](https://huggingface.co/{source}).", source


def model_card(format: str, repo: str | None, source: str, timestep_shift: bool, random_weights: bool = False) -> str:
    """The model card for a folder in `format` ("diffusers" or "transformers") converted from `source`."""
    description, base_model = describe_source(source, random_weights)
    diffusers = format == "diffusers"
    tags = ["ovis-u1", "text-to-image", "image-editing", "image-text-to-text"] if diffusers else None
    data = ModelCardData(
        license="apache-2.0",
        library_name="diffusers" if diffusers else "transformers",
        pipeline_tag="text-to-image" if diffusers else "image-text-to-text",
        base_model=base_model,
        tags=tags or ["ovis-u1", "image-text-to-text"],
    )
    card = ModelCard.from_template(
        data,
        template_str=DIFFUSERS_CARD if diffusers else TRANSFORMERS_CARD,
        base_url=f"https://huggingface.co/{DEFAULT_MODEL_ID}",
        source=description,
        install=INSTALL,
        repo=repo or "path/to/this/folder",
        shift_note=", with the released resolution-dependent time shift" if timestep_shift else "",
    )
    return str(card) + "\n"


__all__ = ["model_card"]

# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""`ovis-u1` command line: chat about images, generate and edit images, convert the released checkpoint, run the
demo."""

import argparse
import sys

from . import DEFAULT_MODEL_ID
from .cache import PIPELINE, ModelUnavailableError, resolve_model


class UsageError(ValueError):
    """A bad argument, reported before anything is loaded."""


DTYPES = {"auto": None, "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL_ID,
        help="Hub id or folder: the released checkpoint (converted once into the cache) or a converted one",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="bfloat16 on GPU, float32 on CPU by default")
    parser.add_argument("--offload", action="store_true", help="keep models on the CPU until they run (GPU only)")
    parser.add_argument("--attn", choices=["eager", "sdpa", "flash_attention_2"], default=None)


def resolve_device_and_dtype(args):
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype] or ("bfloat16" if device.startswith("cuda") else "float32")
    return device, getattr(torch, dtype)


def load_pipeline(args, pipeline_class):
    device, dtype = resolve_device_and_dtype(args)
    model = resolve_model(args.model)
    if model.layout != PIPELINE:
        raise ModelUnavailableError(
            f"{args.model} holds the understanding model only; `ovis-u1 {args.command}` needs a pipeline folder "
            "(`ovis-u1 convert` writes one)."
        )
    pipe = pipeline_class.from_pretrained(model.path, dtype=dtype)
    if args.attn is not None:
        pipe.text_encoder.set_attn_implementation(args.attn)
    if args.offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def chat(args) -> None:
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    from .chat import stream_answer

    device, dtype = resolve_device_and_dtype(args)
    resolved = resolve_model(args.model)
    # A pipeline folder holds the understanding model and its processor in subfolders; an understanding folder, at its
    # root.
    in_subfolders = resolved.layout == PIPELINE
    kwargs = {"subfolder": "text_encoder"} if in_subfolders else {}
    model = AutoModel.from_pretrained(resolved.path, dtype=dtype, attn_implementation=args.attn, **kwargs)
    model.to(device).eval()
    processor = AutoProcessor.from_pretrained(resolved.path, subfolder="processor" if in_subfolders else "")

    images = [Image.open(path) for path in args.image]
    answer = stream_answer(
        model, processor, args.question, images, max_new_tokens=args.max_new_tokens, think=args.think, device=device
    )
    for text in answer:
        print(text, end="", flush=True)
    print()


def generate(args) -> None:
    import torch

    from .pipelines import OvisU1TextToImagePipeline

    from .pipelines import MAX_IMAGE_SIZE

    for name in ("height", "width"):
        if not 16 <= getattr(args, name) <= MAX_IMAGE_SIZE:
            raise UsageError(f"--{name} must be between 16 and {MAX_IMAGE_SIZE}, got {getattr(args, name)}.")
    pipe = load_pipeline(args, OvisU1TextToImagePipeline)
    images = pipe(
        args.prompt,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        num_images_per_prompt=args.count,
        generator=torch.Generator().manual_seed(args.seed),
    ).images
    save_images(images, args.output)


def edit(args) -> None:
    import torch
    from PIL import Image

    from .pipelines import OvisU1EditPipeline

    pipe = load_pipeline(args, OvisU1EditPipeline)
    images = pipe(
        Image.open(args.image),
        args.instruction,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        image_guidance_scale=args.image_guidance,
        num_images_per_prompt=args.count,
        generator=torch.Generator().manual_seed(args.seed),
    ).images
    save_images(images, args.output)


def save_images(images, output: str) -> None:
    stem, dot, suffix = output.rpartition(".")
    stem, suffix = (stem, suffix) if dot else (output, "png")
    for index, image in enumerate(images):
        path = f"{stem}.{suffix}" if len(images) == 1 else f"{stem}-{index}.{suffix}"
        image.save(path)
        print(path)


def demo(args) -> None:
    from .demo import run_demo

    run_demo(args.output, rebuild=args.rebuild)


def convert(args) -> None:
    from .conversion import ConversionError, convert as convert_checkpoint

    try:
        report = convert_checkpoint(
            args.output,
            args.source,
            format=args.format,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            force=args.force,
            verify=args.verify,
            push_to_hub=args.push_to_hub,
            private=args.private,
            revision=args.revision,
        )
    except ConversionError as error:
        raise SystemExit(f"ovis-u1 convert: error: {error}") from None
    print(report.summary(verbose=args.verbose))


def app(args) -> None:
    from .app import import_gradio, launch
    from .pipelines import OvisU1TextToImagePipeline

    try:
        import_gradio()  # before loading the model
    except ImportError as error:
        raise SystemExit(f"ovis-u1 app: error: {error}") from None
    launch(load_pipeline(args, OvisU1TextToImagePipeline), host=args.host, port=args.port, share=args.share)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovis-u1", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    chat_parser = commands.add_parser("chat", help="ask about images; the answer streams")
    chat_parser.add_argument("question")
    chat_parser.add_argument("--image", action="append", default=[], help="an image (repeat for several)")
    chat_parser.add_argument("--max-new-tokens", type=int, default=1024)
    chat_parser.add_argument("--think", action="store_true", help="let the model think before answering")
    add_common_arguments(chat_parser)
    chat_parser.set_defaults(func=chat)

    generate_parser = commands.add_parser("generate", help="generate an image from text")
    generate_parser.add_argument("prompt")
    generate_parser.add_argument("--output", default="image.png")
    generate_parser.add_argument("--height", type=int, default=1024)
    generate_parser.add_argument("--width", type=int, default=1024)
    generate_parser.add_argument("--steps", type=int, default=50)
    generate_parser.add_argument("--guidance", type=float, default=5.0)
    generate_parser.add_argument("--seed", type=int, default=0)
    generate_parser.add_argument("--count", type=int, default=1)
    add_common_arguments(generate_parser)
    generate_parser.set_defaults(func=generate)

    edit_parser = commands.add_parser("edit", help="edit an image following an instruction")
    edit_parser.add_argument("image")
    edit_parser.add_argument("instruction")
    edit_parser.add_argument("--output", default="edited.png")
    edit_parser.add_argument("--steps", type=int, default=50)
    edit_parser.add_argument("--guidance", type=float, default=6.0, help="text guidance")
    edit_parser.add_argument("--image-guidance", type=float, default=1.5)
    edit_parser.add_argument("--seed", type=int, default=0)
    edit_parser.add_argument("--count", type=int, default=1)
    add_common_arguments(edit_parser)
    edit_parser.set_defaults(func=edit)

    convert_parser = commands.add_parser(
        "convert", help="convert the released checkpoint into a Hub-ready diffusers (or transformers) folder"
    )
    convert_parser.add_argument("output", help="folder to write (must not exist unless --force)")
    convert_parser.add_argument(
        "--source", default=DEFAULT_MODEL_ID, help="released checkpoint: a local folder or a Hub repo id"
    )
    convert_parser.add_argument("--revision", default=None, help="revision of a Hub --source")
    convert_parser.add_argument(
        "--format",
        choices=["diffusers", "transformers"],
        default="diffusers",
        help="diffusers: the whole pipeline folder; transformers: the understanding model and processor only",
    )
    convert_parser.add_argument(
        "--dtype", choices=["keep", "bfloat16", "float16", "float32"], default="keep", help="weights dtype"
    )
    convert_parser.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB or 500MB")
    convert_parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    convert_parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip reloading the output and comparing it with the released weights on a synthetic input",
    )
    convert_parser.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the folder there")
    convert_parser.add_argument("--private", action="store_true", help="create the --push-to-hub repo private")
    convert_parser.add_argument("--verbose", action="store_true", help="list the config fields the conversion ignores")
    convert_parser.set_defaults(func=convert)

    demo_parser = commands.add_parser(
        "demo",
        help="run chat, text-to-image and edit on a small RANDOM model built offline (outputs are noise)",
        description="Builds (once, into the cache) a small checkpoint with random weights in the released layout, "
        "converts it, and runs the three tasks on it: everything works offline in well under a minute on a CPU. "
        "The weights are random, so the answer and the images are noise.",
    )
    demo_parser.add_argument("--output", default="ovis-u1-demo", help="folder for the images and report.md")
    demo_parser.add_argument("--rebuild", action="store_true", help="build the cached demo checkpoint anew")
    demo_parser.set_defaults(func=demo)

    app_parser = commands.add_parser("app", help="serve the Gradio app (chat, generate, edit) in the browser")
    app_parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for the network")
    app_parser.add_argument("--port", type=int, default=7860)
    app_parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    add_common_arguments(app_parser)
    app_parser.set_defaults(func=app)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ModelUnavailableError as error:  # offline, not found, not an Ovis-U1 model: a message, not a traceback
        raise SystemExit(f"ovis-u1 {args.command}: error: {error}") from None
    except UsageError as error:  # one line and status 2, as argparse reports bad arguments
        print(f"ovis-u1 {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())

# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""
The `ovis-u1` commands, run on parsed arguments (`ovis_u1_cli` parses them). Each command checks everything the user
typed before it loads a model, and loads before it computes.
"""

import socket

from ovis_u1_cli import build_parser, main

from .cache import PIPELINE, check_cache_dir, resolve_model
from .inputs import (
    InputError,
    check_attention,
    check_device,
    check_image_size,
    check_text,
    check_writable_folder,
    open_image,
    output_paths,
    save_image_atomically,
)


def resolve_device_and_dtype(args):
    import torch

    device = check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"), args.offload)
    check_attention(args.attn)
    dtype = None if args.dtype == "auto" else args.dtype
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    return device, getattr(torch, dtype)


def resolve_pipeline_folder(args) -> str:
    model = resolve_model(args.model)
    if model.layout != PIPELINE:
        raise InputError(
            f"{args.model} holds the understanding model only; `ovis-u1 {args.command}` needs a pipeline folder "
            "(`ovis-u1 convert` writes one)."
        )
    return model.path


# `--attn` for the transformer: the same kernels through diffusers' attention dispatch.
DIFFUSERS_ATTENTION_BACKENDS = {"eager": "_native_math", "sdpa": "native", "flash_attention_2": "flash"}


def load_pipeline(args, pipeline_class, device, dtype, path):
    pipe = pipeline_class.from_pretrained(path, dtype=dtype)
    if args.attn is not None:
        pipe.text_encoder.set_attn_implementation(args.attn)
        pipe.transformer.set_attention_backend(DIFFUSERS_ATTENTION_BACKENDS[args.attn])
    if args.offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def chat(args) -> None:
    from transformers import AutoModel, AutoProcessor

    from .chat import stream_answer

    check_text(args.question, "The question", "type what to ask.")
    images = [open_image(path, f"--image {path}") for path in args.image]
    device, dtype = resolve_device_and_dtype(args)
    resolved = resolve_model(args.model)
    # A pipeline folder holds the understanding model and its processor in subfolders; an understanding folder, at its
    # root.
    in_subfolders = resolved.layout == PIPELINE
    kwargs = {"subfolder": "text_encoder"} if in_subfolders else {}
    model = AutoModel.from_pretrained(resolved.path, dtype=dtype, attn_implementation=args.attn, **kwargs)
    model.to(device).eval()
    processor = AutoProcessor.from_pretrained(resolved.path, subfolder="processor" if in_subfolders else "")

    answer = stream_answer(
        model, processor, args.question, images, max_new_tokens=args.max_new_tokens, think=args.think, device=device
    )
    for text in answer:
        print(text, end="", flush=True)
    print()


def generate(args) -> None:
    import torch

    from .pipelines import OvisU1TextToImagePipeline

    check_text(args.prompt, "The prompt", "describe the image to generate.")
    check_image_size(args)
    paths = output_paths(args.output, args.count)
    device, dtype = resolve_device_and_dtype(args)
    pipe = load_pipeline(args, OvisU1TextToImagePipeline, device, dtype, resolve_pipeline_folder(args))
    images = pipe(
        args.prompt,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        num_images_per_prompt=args.count,
        generator=torch.Generator().manual_seed(args.seed),
    ).images
    save_images(images, paths)


def edit(args) -> None:
    import torch

    from .pipelines import OvisU1EditPipeline

    image = open_image(args.image, f"The image {args.image}")
    check_text(args.instruction, "The instruction", "describe the edit to make.")
    if (args.height is None) != (args.width is None):
        raise InputError("Give both --height and --width, or neither.")
    check_image_size(args)
    paths = output_paths(args.output, args.count)
    device, dtype = resolve_device_and_dtype(args)
    pipe = load_pipeline(args, OvisU1EditPipeline, device, dtype, resolve_pipeline_folder(args))
    images = pipe(
        image,
        args.instruction,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        image_guidance_scale=args.image_guidance,
        num_images_per_prompt=args.count,
        generator=torch.Generator().manual_seed(args.seed),
    ).images
    save_images(images, paths)


def save_images(images, paths) -> None:
    for image, path in zip(images, paths, strict=True):
        save_image_atomically(image, path)
        print(path)


def demo(args) -> None:
    check_writable_folder(args.output, "--output")
    check_cache_dir()
    from .demo import run_demo

    run_demo(args.output, rebuild=args.rebuild)


def convert(args) -> None:
    from .conversion import convert as convert_checkpoint

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
    print(report.summary(verbose=args.verbose))


def batch(args) -> None:
    from ovis_u1_cli import version

    from .batch import run_batch_command

    run_batch_command(args, version())


def check_port_free(host: str, port: int) -> None:
    """The server can listen on `host:port` (as uvicorn binds it, address reuse on)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as error:
        raise InputError(
            f"cannot listen on {host}:{port} ({error.strerror or error}): another program uses the port, or the "
            "address is not this machine's; choose another --port or --host."
        ) from None


def app(args) -> None:
    from .app import import_gradio, launch
    from .pipelines import OvisU1TextToImagePipeline

    try:
        import_gradio()  # before loading the model
    except ImportError as error:
        raise InputError(str(error)) from None
    check_port_free(args.host, args.port)
    device, dtype = resolve_device_and_dtype(args)
    pipe = load_pipeline(args, OvisU1TextToImagePipeline, device, dtype, resolve_pipeline_folder(args))
    launch(pipe, host=args.host, port=args.port, share=args.share, max_file_size=args.max_file_size)


__all__ = ["build_parser", "main"]


if __name__ == "__main__":
    raise SystemExit(main())

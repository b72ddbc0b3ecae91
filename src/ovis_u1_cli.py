# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""`ovis-u1` command line: chat about images, generate and edit images, convert the released checkpoint, run the
demo, serve the app."""

# This module stands outside the `ovis_u1_hf` package: importing the package registers its classes with transformers,
# which imports torch (seconds). Parsing, `--help` and `--version` import nothing heavy; `ovis_u1_hf.cli` runs the
# commands once the arguments parse.

import argparse
import importlib.metadata
import math
import os
import sys


DEFAULT_MODEL_ID = "AIDC-AI/Ovis-U1-3B"  # ovis_u1_hf.DEFAULT_MODEL_ID, without importing the package
DEBUG_ENV = "OVIS_U1_DEBUG"
DTYPES = ("auto", "float32", "bfloat16", "float16")
USAGE_ERROR, RUNTIME_ERROR = 2, 1  # argparse's status for bad arguments; 1 for what fails while running


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default; an option whose default is None says in its help what happens instead."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def positive_int(text: str) -> int:
    value = int(text)  # argparse reports the ValueError as "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, got {value}")
    return value


def version() -> str:
    try:
        return importlib.metadata.version("ovis-u1-hf")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def model_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL_ID,
        help="Hub id or folder: the released checkpoint (converted once into the cache) or a converted one",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps, ... (default: cuda if available)")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="weights dtype; auto: bfloat16 on GPU, float32 on CPU"
    )
    parser.add_argument("--offload", action="store_true", help="keep models on the CPU until they run (GPU only)")
    parser.add_argument(
        "--attn",
        choices=["eager", "sdpa", "flash_attention_2"],
        default=None,
        help="attention implementation (default: the library's choice, sdpa where available)",
    )
    return parser


def debug_option() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--debug", action="store_true", help=f"show the traceback of a failure (or set {DEBUG_ENV}=1)"
    )
    return parser


BATCH_KEYS = {
    "generate": "prompt, and optionally negative_prompt, seed, height, width, steps, guidance, count, id",
    "edit": "prompt, image, and optionally seed, height, width, steps, guidance, image_guidance, count, id",
    "chat": "prompt, and optionally image (a path or a list), max_new_tokens, think, id",
}


def copy_options(source: argparse.ArgumentParser, target: argparse.ArgumentParser, skip=()) -> None:
    """Gives `target` the optional arguments of `source` (as `parents=` would), so that `batch` keeps every option
    of the single-job commands."""
    for action in source._actions:
        if action.option_strings and not set(action.option_strings) & set(skip):
            target._add_action(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovis-u1", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = dict(formatter_class=HelpFormatter)
    model, debug = model_options(), debug_option()

    chat = commands.add_parser("chat", help="ask about images; the answer streams", parents=[model, debug], **common)
    chat.add_argument("question", help="the question")
    chat.add_argument("--image", action="append", default=[], help="an image file (repeat for several)")
    chat.add_argument("--max-new-tokens", type=positive_int, default=1024, help="longest answer, in tokens")
    chat.add_argument("--think", action="store_true", help="let the model think before answering")

    generate = commands.add_parser(
        "generate", help="generate an image from text", parents=[model, debug], **common
    )
    generate.add_argument("prompt", help="what the image shows")
    generate.add_argument(
        "--output", default="image.png", help="image file (numbered with --count); its extension sets the format"
    )
    generate.add_argument("--height", type=int, default=1024, help="image height in pixels")
    generate.add_argument("--width", type=int, default=1024, help="image width in pixels")
    generate.add_argument("--steps", type=positive_int, default=50, help="denoising steps")
    generate.add_argument("--guidance", type=non_negative_float, default=5.0, help="text guidance scale")
    generate.add_argument("--seed", type=int, default=0, help="random seed")
    generate.add_argument("--count", type=positive_int, default=1, help="number of images")

    edit = commands.add_parser(
        "edit", help="edit an image following an instruction", parents=[model, debug], **common
    )
    edit.add_argument("image", help="the image file to edit")
    edit.add_argument("instruction", help="the edit to make")
    edit.add_argument(
        "--output", default="edited.png", help="image file (numbered with --count); its extension sets the format"
    )
    edit.add_argument(
        "--height",
        type=int,
        help="output height in pixels, with --width (default: the input's aspect ratio at about 1 megapixel)",
    )
    edit.add_argument("--width", type=int, help="output width in pixels, with --height (default: as --height)")
    edit.add_argument("--steps", type=positive_int, default=50, help="denoising steps")
    edit.add_argument("--guidance", type=non_negative_float, default=6.0, help="text guidance scale")
    edit.add_argument("--image-guidance", type=non_negative_float, default=1.5, help="image guidance scale")
    edit.add_argument("--seed", type=int, default=0, help="random seed")
    edit.add_argument("--count", type=positive_int, default=1, help="number of images")

    convert = commands.add_parser(
        "convert",
        help="convert the released checkpoint into a Hub-ready diffusers (or transformers) folder",
        parents=[debug],
        **common,
    )
    convert.add_argument("output", help="folder to write (must not exist unless --force)")
    convert.add_argument(
        "--source", default=DEFAULT_MODEL_ID, help="released checkpoint: a local folder or a Hub repo id"
    )
    convert.add_argument("--revision", default=None, help="revision of a Hub --source (default: the main branch)")
    convert.add_argument(
        "--format",
        choices=["diffusers", "transformers"],
        default="diffusers",
        help="diffusers: the whole pipeline folder; transformers: the understanding model and processor only",
    )
    convert.add_argument(
        "--dtype", choices=["keep", "bfloat16", "float16", "float32"], default="keep", help="weights dtype"
    )
    convert.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB or 500MB")
    convert.add_argument("--force", action="store_true", help="replace an existing output folder")
    convert.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip comparing every written tensor (and the saved configs) with the released weights",
    )
    convert.add_argument(
        "--push-to-hub", metavar="REPO_ID", default=None, help="upload the folder there (default: no upload)"
    )
    convert.add_argument("--private", action="store_true", help="create the --push-to-hub repo private")
    convert.add_argument("--verbose", action="store_true", help="list the config fields the conversion ignores")

    demo = commands.add_parser(
        "demo",
        help="run chat, text-to-image and edit on a small RANDOM model built offline (outputs are noise)",
        description="Builds (once, into the cache) a small checkpoint with random weights in the released layout, "
        "converts it, and runs the three tasks on it: everything works offline in well under a minute on a CPU. "
        "The weights are random, so the answer and the images are noise.",
        parents=[debug],
        **common,
    )
    demo.add_argument("--output", default="ovis-u1-demo", help="folder for the images and report.md")
    demo.add_argument("--rebuild", action="store_true", help="build the cached demo checkpoint anew")

    batch = commands.add_parser(
        "batch",
        help="run many chat, generate or edit jobs from a JSONL file, resumable, on one or several processes",
        description="Runs the jobs of a JSONL file (one JSON object a line) and records each in OUTPUT_DIR/results.jsonl; "
        "a rerun skips the jobs already done. Under `accelerate launch -m ovis_u1_hf.cli batch ...` or `torchrun "
        "-m ovis_u1_hf.cli batch ...` the processes share the jobs.",
        **common,
    )
    tasks = batch.add_subparsers(dest="batch_command", required=True, metavar="TASK")
    for name, single in (("generate", generate), ("edit", edit), ("chat", chat)):
        task = tasks.add_parser(
            name,
            help=f"`{name}` jobs; the `ovis-u1 {name}` options are the defaults of lines that leave them out",
            **common,
        )
        task.add_argument("jobs", metavar="JOBS", help=f"JSONL file, one job a line: {BATCH_KEYS[name]}")
        task.add_argument("--output-dir", required=True, help="folder for the outputs and results.jsonl")
        task.add_argument(
            "--batch-size", type=positive_int, default=1, help="images (answers for chat) per model call"
        )
        if name == "generate":
            task.add_argument(
                "--layout",
                choices=["flat", "geneval"],
                default="flat",
                help="flat: NNNNN.png per line; geneval: NNNNN/metadata.jsonl and NNNNN/samples/NNNNN.png",
            )
            task.add_argument(
                "--negative-prompt",
                default=None,
                help='text of the unguided branch (default: "Generate an image.", as the released model)',
            )
        copy_options(single, task, skip=("--output", "-h"))

    app = commands.add_parser(
        "app", help="serve the Gradio app (chat, generate, edit) in the browser", parents=[model, debug], **common
    )
    app.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for the network")
    app.add_argument("--port", type=port, default=7860, help="port to listen on")
    app.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    app.add_argument("--max-file-size", default="20MB", help="largest upload, e.g. 20MB or 500KB")
    return parser


def main(argv=None) -> int:
    """Runs `ovis-u1` with `argv` (default: the command line). Returns the exit status: 0, 2 for a bad input, 1 for a
    failure while running; each with one line on stderr (`--debug` or OVIS_U1_DEBUG=1 shows the traceback)."""
    args = build_parser().parse_args(argv)
    prog = f"ovis-u1 {args.command}"
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        from ovis_u1_hf import cli

        getattr(cli, args.command)(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            raise
        from ovis_u1_hf.inputs import InputError

        if isinstance(error, InputError):
            print(f"{prog}: error: {error}", file=sys.stderr)
            return USAGE_ERROR
        if type(error).__module__.startswith("ovis_u1_hf"):  # the package's own errors say what happened
            message = str(error)
        else:
            message = f"{type(error).__name__}: {error} (--debug shows the traceback)"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return RUNTIME_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())

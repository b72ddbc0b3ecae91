"""
End-to-end speed of the pipelines (text-to-image, edit) and of chat, at the released depths.

    python benchmarks/bench_end_to_end.py [--width full|half|quarter] [--size 1024] [--steps 50] [--device cuda]
    python benchmarks/bench_end_to_end.py --tiny --device cpu     # a seconds-long smoke run

A random checkpoint in the released layout (28 LLM layers, 24 vision layers, 6 double + 12 single decoder blocks, the
released vocabularies and VAE; widths full, half or a quarter of the released ones) is written to a temporary folder,
converted with the real converter and loaded as the pipelines. Each mode runs once to warm up (one step, another
prompt or instruction on the same image) and once timed, as in an app or a batch job where prompts change and the
rest repeats; every number of one table comes from one run, so compare ratios, not seconds across runs.

- baseline: the released algorithm written plainly: each guidance branch's condition from its own language-model
  call, one transformer call per branch per step with the token refiner inside it, float32.
- exact: the pipeline as it is (float32). Its output is the reference of the deviations.
- exact, first call: the same with nothing kept from earlier calls (`pipe.condition_cache`, `pipe.context_cache`
  cleared).
- exact, batched: the guidance branches in one masked transformer call per step (the default on accelerators;
  `pipe.batch_guidance_branches = True`), on a device where the default is one call per branch, and vice versa.
- cache: exact plus diffusers' first-block cache (`FirstBlockCacheConfig`).
- TaylorSeer, TaylorSeer lite: exact plus diffusers' TaylorSeer cache (`TaylorSeerCacheConfig()` with its defaults:
  after 3 computed steps, every 5th computed and the others extrapolated; lite extrapolates the model's output
  instead of each block's attention).
- compile: exact with the transformer's repeated blocks compiled (`compile_repeated_blocks`); on CUDA by default,
  on the CPU only with `--compile` (it needs a C++ compiler and minutes).
- bf16: the pipeline in bfloat16 (the VAE stays float32).
- bf16 + cache: both.
- bf16 + int8: the transformer's and the language model's linear weights in int8 (torchao's `Int8WeightOnlyConfig`
  through diffusers' `PipelineQuantizationConfig`), bfloat16 activations; measured last, alone in memory, and only
  where torchao is installed.
- chat, static cache: `generate(cache_implementation="static")`; static cache + compile: its decoding step compiled
  by `generate` (with `--compile` on the CPU, where transformers does not compile by default).

Peak memory is the resident set (RSS) sampled during the mode on the CPU, `torch.cuda.max_memory_allocated` on a GPU.
Deviations are max |image - exact image| on [0, 1] pixels; for chat, max |logits - exact logits| of the first token.
"""

import argparse
import gc
import importlib.util
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ovis_u1_hf.conversion import convert
from ovis_u1_hf.conversion.released_layout import random_tensors, released_config, write_released
from ovis_u1_hf.pipelines import OvisU1EditPipeline, OvisU1TextToImagePipeline
from ovis_u1_hf.pipelines.pipeline_ovis_u1 import TEXT_TO_IMAGE_TEMPLATE


RELEASED_DEPTHS = dict(llm_layers=28, vision_layers=24, decoder_depth=6, decoder_single_depth=12)
WIDTH_DIVISORS = {"full": 1, "half": 2, "quarter": 4}
PROMPT = "a red cat sitting on a blue mat next to an old lamp"
INSTRUCTION = "make the sky purple and add a small yellow moon"
# The warm-up runs: other text, the same size and image.
WARM_UP_PROMPTS = ["a green bird on a branch", "a lighthouse on a rocky coast at dusk, painted in oils"]
WARM_UP_INSTRUCTIONS = ["turn it into a pencil drawing", "remove the background and put the subject on a beach"]
QUESTION = "What is in the picture? Describe it in detail."


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- checkpoint ----------


def scaled_config(divisor: int) -> dict:
    """The released config at the released depths, every width divided by `divisor` (head widths kept: the decoder's
    rotary axes and the LLM's head dim depend on them)."""
    config = released_config(released_widths=True, full_attention_blocks=(7, 15, 23), **RELEASED_DEPTHS)
    if divisor == 1:
        return config
    llm = config["llm_config"]
    llm.update(
        hidden_size=2048 // divisor, intermediate_size=6144 // divisor,
        num_attention_heads=16 // divisor, num_key_value_heads=max(1, 8 // divisor),
    )  # fmt: skip
    config["hidden_size"] = llm["hidden_size"]
    backbone = config["visual_tokenizer_config"]["backbone_config"]
    backbone.update(hidden_size=1024 // divisor, intermediate_size=2816 // divisor, num_attention_heads=8 // divisor)
    generator = config["visual_generator_config"]
    width = 1536 // divisor
    generator.update(
        hidden_size=width, num_heads=12 // divisor, vec_in_dim=width, context_in_dim=2 * llm["hidden_size"]
    )
    return config


def build_pipelines(folder: Path, tiny: bool, width: str, dtype: torch.dtype = torch.float32):
    """Writes, converts and loads a random checkpoint; returns the text-to-image and edit pipelines in `dtype` (the
    converted pipeline folder is `folder / "out"`)."""
    if tiny:
        config = released_config()
    else:
        config = scaled_config(WIDTH_DIVISORS[width])
    log("writing a random checkpoint in the released layout ...")
    write_released(folder / "released", config, random_tensors(config, dtype=dtype))
    if not tiny:
        # The released processor's limits (the layout helper writes tiny ones): a 448 x 448 condition image, 256
        # visual tokens, as the released model sees it.
        path = folder / "released" / "preprocessor_config.json"
        preprocessor = json.loads(path.read_text())
        preprocessor.update(min_pixels=200704, max_pixels=3211264)
        path.write_text(json.dumps(preprocessor, indent=2))
    log("converting ...")
    convert(folder / "out", folder / "released", dtype="keep", verify=False)
    log("loading ...")
    text_to_image = OvisU1TextToImagePipeline.from_pretrained(folder / "out", dtype=dtype)
    edit = OvisU1EditPipeline.from_pipe(text_to_image, dtype=dtype)  # without a dtype, from_pipe casts to float32
    return text_to_image, edit


def has_torchao() -> bool:
    return importlib.util.find_spec("torchao") is not None


def weight_only_pipelines(folder: Path, scheme: str, dtype: torch.dtype):
    """The pipelines of a converted folder with the transformer's and the language model's linear weights quantized by
    torchao (`scheme` "int8" or "float8"), as a user loads them: diffusers' `PipelineQuantizationConfig`."""
    from diffusers import PipelineQuantizationConfig
    from diffusers import TorchAoConfig as DiffusersTorchAoConfig
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig
    from transformers import TorchAoConfig as TransformersTorchAoConfig

    weights = {"int8": Int8WeightOnlyConfig, "float8": Float8WeightOnlyConfig}[scheme]()
    config = PipelineQuantizationConfig(
        quant_mapping={
            "transformer": DiffusersTorchAoConfig(weights),
            "text_encoder": TransformersTorchAoConfig(weights),
        }
    )
    text_to_image = OvisU1TextToImagePipeline.from_pretrained(folder, quantization_config=config, dtype=dtype)
    return text_to_image, OvisU1EditPipeline.from_pipe(text_to_image, dtype=dtype)


# ---------------------------------------------------------------------------------------------- measuring -----------


class PeakMemory:
    """Peak memory while the block runs: `torch.cuda.max_memory_allocated`, or the RSS sampled every 2 ms."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

    def sample(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = self.rss()
            self.done = threading.Event()
            self.thread = threading.Thread(target=self.sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.done.set()
            self.thread.join()
            self.peak = max(self.peak, self.rss())


def timed(device: torch.device, fn):
    """`(result, seconds, peak bytes)` of `fn()`."""
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return result, seconds, memory.peak


# ---------------------------------------------------------------------------------------------- the baseline --------


def euler_sigmas(pipe, steps: int, tokens: int, device) -> torch.Tensor:
    """The released schedule `t = linspace(1, 0, steps + 1)`, shifted by `mu(tokens)` when the model shifts."""
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    config = pipe.scheduler.config
    if config.use_dynamic_shifting:
        slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
        mu = config.base_shift + slope * (tokens - config.base_image_seq_len)
        t = torch.where(t > 0, np.exp(mu) / (np.exp(mu) + (1 / t - 1)), t)
    return t.to(device, torch.float32)


def released_sampler(pipe, conditions, latents, steps, combine, context=None, img_ids=None, context_ids=None):
    """Euler over `steps`: every branch is its own transformer call on its unrefined condition, so the token refiner
    runs again at every step, as in the released code. `context[i]` is branch i's context image or None."""
    sigmas = euler_sigmas(pipe, steps, latents.shape[1], latents.device)
    for i in range(steps):
        t = sigmas[i].expand(latents.shape[0])
        velocities = []
        for branch, condition in enumerate(conditions):
            extra = {}
            if context is not None and context[branch] is not None:
                extra = dict(context_hidden_states=context[branch], context_ids=context_ids)
            velocities.append(
                pipe.transformer(latents, t, img_ids, condition, return_dict=False, **extra)[0]
            )
        latents = latents + (sigmas[i + 1] - sigmas[i]) * combine(*velocities)
    return latents


def released_condition(pipe, text, image, device):
    """One branch's condition from its own language-model call on its own image, as the released code computes it."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    inputs = pipe.processor.encode_chat([conversation], images=[[image]], return_tensors="pt").to(device)
    return pipe.text_encoder.get_generation_condition(**inputs)


def baseline_text_to_image(pipe, size, steps, latents, cfg=5.0):
    device = pipe._execution_device
    white = pipe.condition_image(PIL.Image.new("RGB", (size, size), (255, 255, 255)), size, size)
    texts = [pipe.prompt_template.format(PROMPT), pipe.unconditional_prompt]
    conditions = [released_condition(pipe, text, white, device) for text in texts]
    grid = pipe.token_grid(size, size)
    out = released_sampler(
        pipe, conditions, latents, steps, lambda c, u: u + cfg * (c - u), img_ids=pipe.latent_ids(*grid, 0, device)
    )
    return pipe.decode(out, size, size, "np")


def baseline_edit(pipe, image, steps, latents, txt_cfg=6.0, img_cfg=1.5):
    device = pipe._execution_device
    height, width = pipe.edit_size([image], None, None)
    image = image.resize((width, height), resample=PIL.Image.Resampling.BICUBIC)
    seen = pipe.condition_image(image, width, height)
    white = pipe.condition_image(PIL.Image.new("RGB", (width, height), (255, 255, 255)), width, height)
    pairs = [(INSTRUCTION, seen), (pipe.unconditional_prompt, seen), (pipe.unconditional_prompt, white)]
    conditions = [released_condition(pipe, text, img, device) for text, img in pairs]
    fitted = pipe.processor.image_processor.fit_image(image, width, height)
    context = pipe.encode_image([fitted], torch.Generator().manual_seed(0), device)
    grid = pipe.token_grid(height, width)

    def combine(cond, no_text, no_both):
        return no_both + img_cfg * (no_text - no_both) + txt_cfg * (cond - no_text)

    out = released_sampler(
        pipe, conditions, latents, steps, combine, context=[context, context, None],
        img_ids=pipe.latent_ids(*grid, 0, device), context_ids=pipe.latent_ids(*grid, 1, device),
    )  # fmt: skip
    return pipe.decode(out, height, width, "np")


# ---------------------------------------------------------------------------------------------- the modes -----------


def chat(pipe, image, max_new_tokens, **generate_kwargs):
    """Greedy answer of exactly `max_new_tokens` tokens; returns (first-token logits, first-token time, tokens/s)."""
    model, processor = pipe.text_encoder, pipe.processor
    inputs = processor.encode_chat(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        images=[[image]],
        add_generation_prompt=True,
        return_tensors="pt",
    ).to(pipe._execution_device)
    stamps, first = [], []

    def record(input_ids, scores):  # called once per new token, right after its forward pass
        if pipe._execution_device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        if not first:
            first.append(scores.float().clone())
        return scores

    start = time.perf_counter()
    model.generate(
        **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
        logits_processor=[record], **generate_kwargs,
    )  # fmt: skip
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return first[0], stamps[0] - start, rate


def logit_deviation(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Max |difference| over the finite logits (`min_new_tokens` sets the end token's to -inf in both)."""
    finite = reference.isfinite()
    return float((logits[finite] - reference[finite]).abs().max())


def forget_earlier_calls(pipe) -> None:
    pipe.condition_cache.clear()
    pipe.context_cache.clear()


def forget_timed_text(pipe) -> None:
    """Drops the kept conditions of the timed prompt and instruction, so every timed call computes its text's condition
    as a new prompt would (the warm-up's text differs; earlier modes timed the same one)."""
    timed = {TEXT_TO_IMAGE_TEMPLATE.format(PROMPT), INSTRUCTION}
    cache = pipe.condition_cache
    with cache.lock:
        for key in [key for key in cache.entries if key[0] == "condition" and key[1] in timed]:
            del cache.entries[key]


def uncompile(module: torch.nn.Module) -> None:
    for sub in module.modules():
        sub._compiled_call_impl = None


def decode_compile_config(device: torch.device):
    """What `generate` compiles the static-cache decoding step with; on the CPU it compiles only when told to."""
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=True, dynamic=False)
    config._compile_all_devices = device.type == "cpu"  # transformers' own switch for CPU compilation (its tests')
    return config


def cache_config(mode: str, threshold: float):
    from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if "TaylorSeer" in mode:
        return TaylorSeerCacheConfig(use_lite_mode=mode.endswith("lite"))
    return FirstBlockCacheConfig(threshold=threshold)


def run(args) -> list[dict]:
    # The converted folder stays until the end: the int8 mode loads its quantized pipelines from it.
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        return run_in(args, Path(folder))


@torch.no_grad()
def run_in(args, folder: Path) -> list[dict]:
    device = torch.device(args.device)
    size = args.size or (64 if args.tiny else 1024)
    steps = args.steps or (2 if args.tiny else 50)
    new_tokens = args.new_tokens or (8 if args.tiny else 64)
    compile_blocks = args.compile if args.compile is not None else device.type == "cuda"
    rows = []
    text_to_image, edit = build_pipelines(folder, args.tiny, args.width)
    text_to_image.to(device)
    text_to_image.set_progress_bar_config(disable=args.quiet)

    grid = text_to_image.token_grid(size, size)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, grid[0] * grid[1], 16, generator=generator).to(device)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    edit_grid = edit.token_grid(*edit.edit_size([image], None, None))
    edit_latents = torch.randn(1, edit_grid[0] * edit_grid[1], 16, generator=generator).to(device)

    def t2i(pipe, n=steps, warm_up=0):
        prompt = WARM_UP_PROMPTS[warm_up] if n != steps else PROMPT
        return pipe(prompt, height=size, width=size, num_inference_steps=n, latents=latents, output_type="np").images

    def ed(pipe, n=steps, warm_up=0):
        instruction = WARM_UP_INSTRUCTIONS[warm_up] if n != steps else INSTRUCTION
        return pipe(image, instruction, num_inference_steps=n, latents=edit_latents,
                    generator=torch.Generator().manual_seed(0), output_type="np").images  # fmt: skip

    tasks = {
        "text-to-image": (t2i, lambda n=steps: baseline_text_to_image(text_to_image, size, n, latents)),
        "edit": (ed, lambda n=steps: baseline_edit(edit, image, n, edit_latents)),
    }
    reference, seconds = {}, {}

    def measure(task, mode, fn, warm=True, before=None, pipes=None):
        log(f"[{task} / {mode}] warm-up ..." if warm else f"[{task} / {mode}] ...")
        if warm:
            fn(1)
        if mode == "compile":
            # A text of another length recompiles once, now with dynamic text lengths (torch.compile's automatic
            # dynamic shapes); later texts reuse that graph, as in an app's steady state.
            fn(1, 1)
        for pipe in pipes or (text_to_image, edit):
            forget_timed_text(pipe)
        if before is not None:
            before()
        log(f"[{task} / {mode}] timed run ...")
        with torch.no_grad():
            output, secs, peak = timed(device, fn)
        output = np.asarray(output, dtype=np.float64)
        if mode == "exact":
            reference[task] = output
        seconds[task, mode] = secs
        row = dict(task=task, mode=mode, seconds=secs, tokens_per_s=None, first_token_s=None, peak_bytes=peak,
                   deviation=float(np.abs(output - reference[task]).max()) if task in reference else None)  # fmt: skip
        rows.append(row)
        log(f"[{task} / {mode}] {secs:.2f} s")

    def measure_pipelines(mode, pipes):
        for task, (pipeline_fn, _) in tasks.items():
            pipe = pipes[0] if task == "text-to-image" else pipes[1]
            measure(task, mode, lambda n=steps, w=0, f=pipeline_fn, p=pipe: f(p, n, w), pipes=pipes)

    chat_image = image if args.tiny else image.resize((448, 448))

    def measure_chat(mode, pipe=None, **generate_kwargs):
        log(f"[chat / {mode}] ...")
        pipe = text_to_image if pipe is None else pipe
        # A static cache is sized for the call's length, so its warm-up (which compiles) makes as many tokens.
        warm_up_tokens = new_tokens if generate_kwargs else 2
        with torch.no_grad():
            chat(pipe, chat_image, warm_up_tokens, **generate_kwargs)
            (logits, first_token, rate), secs, peak = timed(
                device, lambda: chat(pipe, chat_image, new_tokens, **generate_kwargs)
            )
        if mode == "exact":
            reference["chat"] = logits
        rows.append(dict(task="chat", mode=mode, seconds=secs, tokens_per_s=rate, first_token_s=first_token,
                         peak_bytes=peak, deviation=logit_deviation(logits, reference["chat"])))  # fmt: skip
        log(f"[chat / {mode}] {secs:.2f} s, {rate:.1f} tokens/s")

    # The exact reference first, then the baseline and the other exact variants compared with it.
    batched_by_default = text_to_image.batches_guidance_branches(device)
    for task, (pipeline_fn, baseline_fn) in tasks.items():
        pipe = text_to_image if task == "text-to-image" else edit
        run_pipe = lambda n=steps, f=pipeline_fn, p=pipe: f(p, n)  # noqa: E731
        measure(task, "exact", run_pipe)
        measure(task, "baseline", baseline_fn)
        measure(task, "exact, first call", run_pipe, before=lambda p=pipe: forget_earlier_calls(p))
        pipe.batch_guidance_branches = not batched_by_default
        measure(task, "exact, " + ("one call per branch" if batched_by_default else "batched"), run_pipe)
        pipe.batch_guidance_branches = None
    del pipe, run_pipe, baseline_fn
    measure_chat("exact")
    measure_chat("static cache", cache_implementation="static")
    if compile_blocks:
        measure_chat(
            "static cache + compile", cache_implementation="static", compile_config=decode_compile_config(device)
        )
        torch.compiler.reset()

    transformer = text_to_image.transformer
    for mode in ["cache", "TaylorSeer", "TaylorSeer lite"] + (["compile"] if compile_blocks else []):
        if mode == "compile":
            transformer.compile_repeated_blocks()
        else:
            transformer.enable_cache(cache_config(mode, args.cache_threshold))
        measure_pipelines(mode, (text_to_image, edit))
        if mode == "compile":
            uncompile(transformer)
        else:
            transformer.disable_cache()

    text_to_image.to(torch.bfloat16)
    for mode in ["bf16", "bf16 + cache"]:
        if "cache" in mode:
            transformer.enable_cache(cache_config(mode, args.cache_threshold))
        measure_pipelines(mode, (text_to_image, edit))
        if "cache" in mode:
            transformer.disable_cache()
    measure_chat("bf16")

    if has_torchao():
        # Last, with the other pipelines freed, so that the resident memory shows the quantized weights. bfloat16
        # activations: the combination transformers' torchao integration supports.
        del text_to_image, edit, transformer
        tasks = {task: (pipeline_fn, None) for task, (pipeline_fn, _) in tasks.items()}
        torch.compiler.reset()  # compiled code holds the blocks it was compiled for
        gc.collect()
        if device.type == "cpu":
            log(f"resident memory with the other pipelines freed: {PeakMemory.rss() / 2**20:.0f} MiB")
        quantized = weight_only_pipelines(folder / "out", "int8", torch.bfloat16)
        quantized[0].to(device)
        quantized[0].set_progress_bar_config(disable=args.quiet)
        measure_pipelines("bf16 + int8", quantized)
        measure_chat("bf16 + int8", quantized[0])
    else:
        log("bf16 + int8: skipped (torchao is not installed)")

    for row in rows:
        base = seconds.get((row["task"], "baseline")) or seconds.get((row["task"], "exact"))
        row["speedup"] = base / row["seconds"] if row["task"] != "chat" else (
            next(r["seconds"] for r in rows if r["task"] == "chat" and r["mode"] == "exact") / row["seconds"]
        )
    return rows


def table(rows: list[dict]) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = [
        (
            "| task | mode | s / image (chat: s) | speed-up vs baseline | tokens/s | first token (s) | peak memory (MiB) |"
            " max abs deviation |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['mode']} | {r['seconds']:.2f} | {r['speedup']:.2f}x | {fmt(r['tokens_per_s'], '.1f')} "
            f"| {fmt(r['first_token_s'], '.2f')} | {r['peak_bytes'] / 2**20:.0f} | {fmt(r['deviation'], '.3g')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", choices=sorted(WIDTH_DIVISORS), default="quarter")
    parser.add_argument("--tiny", action="store_true", help="the tiny test sizes: a seconds-long smoke run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024, tiny 64)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 50, tiny 2)")
    parser.add_argument("--new-tokens", type=int, default=None, help="chat tokens (default 64, tiny 8)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--cache-threshold", type=float, default=0.05)
    parser.add_argument("--folder", default=None, help="where the temporary checkpoint goes")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    rows = run(args)
    print(f"device {args.device}, " + ("tiny sizes" if args.tiny else f"{args.width} width, released depths"))
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()

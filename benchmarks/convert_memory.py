"""
Peak memory of `ovis-u1 convert` (writing and verifying) on a random checkpoint in the released layout.

    python benchmarks/convert_memory.py --released-widths --llm-layers 1 --vision-layers 1 --max-shard-size 1GB

The conversion runs in a child process. Once it has imported everything it waits; the parent then reads its
anonymous resident memory (`RssAnon` in /proc/PID/status: what the process allocated itself, not the memory-mapped
checkpoint files, whose clean pages the kernel can drop) as the baseline, lets it run and samples it every millisecond
until it exits. The figure is the peak above the baseline, next to the largest output shard and the largest tensor;
the peak total resident memory (`VmRSS`, mapped file pages included) is printed too.
Linux only.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def resident(pid: int) -> tuple[int, int]:
    """Anonymous and total resident bytes of process `pid`."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "VmRSS"):
                values[key] = int(value.split()[0]) * 1024
    return values["RssAnon"], values["VmRSS"]


def child(argv: list[str]) -> None:
    """Imports everything the conversion uses, signals readiness, waits for the parent, then runs the CLI."""
    from ovis_u1_hf import cli
    from ovis_u1_hf.conversion import verify  # noqa: F401

    print("ready", flush=True)
    sys.stdin.readline()
    cli.main(argv)


def measure(argv: list[str]) -> dict:
    """Runs `ovis-u1 <argv>` in a child process; returns its baseline and peak anonymous memory, in bytes."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(argv)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    baseline, peak_total = resident(process.pid)
    peak = baseline
    process.stdin.write("go\n")
    process.stdin.flush()
    while process.poll() is None:
        try:
            anon, total = resident(process.pid)
        except (FileNotFoundError, ProcessLookupError, KeyError):  # exited between poll and read
            break
        peak, peak_total = max(peak, anon), max(peak_total, total)
        time.sleep(0.001)
    output = process.stdout.read()
    if process.wait() != 0:
        raise RuntimeError(f"ovis-u1 {' '.join(argv)} failed:\n{output}")
    return {
        "baseline": baseline,
        "peak": peak,
        "above_baseline": peak - baseline,
        "peak_resident": peak_total,
        "output": output,
    }


def largest_file(folder: Path) -> int:
    return max(path.stat().st_size for path in Path(folder).rglob("*.safetensors"))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(json.loads(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--released-widths", action="store_true", help="the released widths and vocabularies")
    parser.add_argument("--llm-layers", type=int, default=1)
    parser.add_argument("--vision-layers", type=int, default=1)
    parser.add_argument("--decoder-depth", type=int, default=1)
    parser.add_argument("--decoder-single-depth", type=int, default=1)
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--dtype", default="keep")
    parser.add_argument("--folder", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()

    import torch

    from ovis_u1_hf.conversion.released_layout import build_released

    with tempfile.TemporaryDirectory(dir=args.folder) as work:
        work = Path(work)
        released = build_released(
            work / "released",
            dtype=torch.bfloat16,
            released_widths=args.released_widths,
            llm_layers=args.llm_layers,
            vision_layers=args.vision_layers,
            decoder_depth=args.decoder_depth,
            decoder_single_depth=args.decoder_single_depth,
            full_attention_blocks=(0,),
        )
        largest_tensor = max(t.numel() * t.element_size() for t in released.tensors.values())
        parameters = sum(t.numel() for t in released.tensors.values())
        del released
        argv = ["convert", str(work / "out"), "--source", str(work / "released")]
        argv += ["--max-shard-size", args.max_shard_size, "--dtype", args.dtype]
        result = measure(argv)
        shard = largest_file(work / "out")
    mib = 2**20
    print(result["output"])
    print(f"released parameters:        {parameters / 1e6:.0f}M")
    print(f"largest released tensor:    {largest_tensor / mib:.0f} MiB")
    print(f"largest output shard:       {shard / mib:.0f} MiB")
    print(f"baseline (after imports):   {result['baseline'] / mib:.0f} MiB")
    print(f"peak during convert:        {result['peak'] / mib:.0f} MiB")
    print(f"peak resident incl. mapped files: {result['peak_resident'] / mib:.0f} MiB")
    print(f"peak above baseline:        {result['above_baseline'] / mib:.0f} MiB "
          f"({result['above_baseline'] / shard:.2f}x the largest shard)")  # fmt: skip


if __name__ == "__main__":
    main()

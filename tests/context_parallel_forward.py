"""Run by `torchrun --nproc-per-node 2 THIS FOLDER OUTPUT` on CPU (gloo): loads the transformer in FOLDER, splits it
over the processes with diffusers' context parallelism (`enable_parallelism`, the model's `_cp_plan`), once with Ulysses
and once with ring attention, and rank 0 saves the outputs for the cases in `FOLDER/inputs.pt`, by kind and case."""

import sys

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig

from ovis_u1_hf.pipelines import OvisU1Transformer2DModel


def run(folder: str, kind: str) -> dict:
    model = OvisU1Transformer2DModel.from_pretrained(folder).eval()
    cases = torch.load(f"{folder}/inputs.pt")
    for case in cases.values():
        # diffusers splits the inputs its plan names and finds each by name: every one must be passed, None if absent.
        for name in model._cp_plan[""]:
            case.setdefault(name, None)
    with torch.no_grad():
        # The refiner needs the whole condition: it runs before the split, on every process.
        for case in cases.values():
            case["encoder_hidden_states"], case["pooled_projections"] = model.refine_condition(
                case.pop("condition"), case.get("encoder_attention_mask")
            )
    # diffusers picks the device `rank % torch.accelerator.device_count()`, which divides by zero on a machine
    # without an accelerator; on CPU every process uses device "cpu" (index 0).
    torch.accelerator.device_count = lambda: 1
    config = ContextParallelConfig(ulysses_degree=2) if kind == "ulysses" else ContextParallelConfig(ring_degree=2)
    model.enable_parallelism(config=config)
    result = {"world_size": dist.get_world_size()}
    with torch.no_grad():
        for name, case in cases.items():
            try:
                # return_dict=False, as the pipelines call it: diffusers' split hook accepts only tensor outputs.
                result[name] = model(**case, return_dict=False)[0]
            except Exception as error:  # reported to the test, which names the cases expected to fail
                result[name] = f"{type(error).__name__}: {error}"
        try:
            case = next(iter(cases.values()))
            model(**{**case, "pooled_projections": None})
        except ValueError as error:
            result["refiner_error"] = str(error)
    return result


def main(folder: str, output: str) -> None:
    dist.init_process_group("gloo")
    results = {kind: run(folder, kind) for kind in ("ulysses", "ring")}
    if dist.get_rank() == 0:
        torch.save(results, output)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])

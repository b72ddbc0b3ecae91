"""Run by `torchrun --nproc-per-node N THIS FOLDER OUTPUT`: loads FOLDER split over the processes by transformers'
tensor-parallel engine (the model's `tp_plan`), and rank 0 saves the logits and greedy tokens of `FOLDER/inputs.pt`."""

import sys

import torch
import torch.distributed as dist
from transformers import DistributedConfig

from ovis_u1_hf import OvisU1ForConditionalGeneration


def main(folder: str, output: str) -> None:
    model = OvisU1ForConditionalGeneration.from_pretrained(folder, distributed_config=DistributedConfig(tp_plan="auto"))
    inputs = torch.load(f"{folder}/inputs.pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    gate = model.model.language_model.layers[0].mlp.gate_proj.weight
    if dist.get_rank() == 0:
        result = {"logits": logits, "tokens": tokens, "world_size": dist.get_world_size()}
        result["gate_rows_here"] = gate.to_local().shape[0] if hasattr(gate, "to_local") else gate.shape[0]
        torch.save(result, output)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])

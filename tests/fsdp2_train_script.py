"""Run by tests/test_fsdp2.py: a patched tiny GPT-2 trained with FSDP2, or its 1-process reference.

``sharded`` (under torchrun, N CPU processes over gloo): ``fully_shard`` per transformer block;
each rank takes its slice of every global batch, all ranks start from the same seed, so they draw
the same Sparseout masks (their slices have the same shape). ``reference`` (one process, no
sharding): for each global batch, every slice is run from the same RNG state and gets ``loss / N``
of the gradient: the computation the sharded run does, without sharding. Both write the mean loss
per step (and with ``--save`` the final model, full state dict) to JSON.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
from transformers import GPT2Config, GPT2LMHeadModel

import hf_sparseout
from hf_sparseout.integrations.fsdp import full_state_dict, shard_blocks

SLICES, SLICE_BATCH, SEQ, STEPS = 2, 2, 16, 5


def build(gradient_checkpointing: bool) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(q=1.5, p=0.2))
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def batches() -> list[torch.Tensor]:
    """The same global batch at every step (random tokens: memorising them is what makes the loss fall)."""
    ids = torch.randint(0, 128, (SLICES * SLICE_BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    return [ids] * STEPS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["sharded", "reference"])
    parser.add_argument("out")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--save", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sharded = args.mode == "sharded"
    if sharded:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        assert world == SLICES, f"launch {SLICES} processes, got {world}"
    else:
        rank, world = 0, 1
    model = build(args.gradient_checkpointing)
    blocks = shard_blocks(model) if sharded else []
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for ids in batches():
        if sharded:
            part = ids[rank * SLICE_BATCH : (rank + 1) * SLICE_BATCH]
            loss = model(input_ids=part, labels=part).loss
            loss.backward()
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            losses.append(mean.item() / world)
        else:
            start, total = torch.get_rng_state(), 0.0
            for r in range(SLICES):
                torch.set_rng_state(start)
                part = ids[r * SLICE_BATCH : (r + 1) * SLICE_BATCH]
                loss = model(input_ids=part, labels=part).loss
                (loss / SLICES).backward()
                total += loss.item() / SLICES
            losses.append(total)
        optimizer.step()
        optimizer.zero_grad()
    result = {"losses": losses, "world_size": world, "blocks": blocks}
    if sharded:
        result["sharded_params"] = sum(type(p).__name__ == "DTensor" for p in model.parameters())
    if args.save:
        state = full_state_dict(model) if sharded else None
        hf_sparseout.save_pretrained(model, args.save, is_main_process=rank == 0, state_dict=state)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
    if sharded:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

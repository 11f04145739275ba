"""Run by tests/test_monitor_multiprocess.py: the monitor over a fixed set of padded batches.

Under ``accelerate launch --num_processes N`` each process takes every N-th batch and ``compute()``
all-reduces the sums; process 0 writes the result as JSON to the path given as argument.
"""

import json
import sys

import torch
from accelerate import Accelerator
from transformers import GPT2Config, GPT2LMHeadModel

import hf_sparseout
from hf_sparseout.metrics import SparsityMonitor


def main() -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    hf_sparseout.patch(model, hf_sparseout.SparseoutConfig(q=1.5))
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(6):
        ids = torch.randint(1, 64, (3, 12), generator=g)
        mask = (torch.arange(12)[None] < torch.randint(4, 13, (3, 1), generator=g)).long()
        batches.append((ids, mask))
    monitor = SparsityMonitor(model, histogram_sites=["h.1.mlp.dropout"])
    prepared = accelerator.prepare(model).eval()
    with monitor, torch.no_grad():
        for ids, mask in batches[accelerator.process_index :: accelerator.num_processes]:
            prepared(input_ids=ids, attention_mask=mask)
    result = monitor.compute()
    result["num_processes"] = accelerator.num_processes
    if accelerator.is_main_process:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()

"""Run by tests/test_trainer_callback.py: ``trainer.evaluate()`` with ``SparsityCallback``, 1 or N processes.

Under ``accelerate launch --multi_gpu --num_processes N`` (gloo on CPU) Trainer shards the eval set and
repeats samples to even the last batch; process 0 writes the metrics and the world size as JSON.
"""

import json
import sys

import torch
from trainer_helpers import make_trainer

from hf_sparseout import SparsityCallback


def main() -> None:
    torch.set_num_threads(1)
    out = sys.argv[1]
    trainer = make_trainer(out + ".trainer", callbacks=[SparsityCallback()], eval_rows=7, max_steps=0)
    metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        with open(out, "w") as f:
            json.dump({"metrics": metrics, "world_size": trainer.args.world_size, "eval_rows": 7}, f)


if __name__ == "__main__":
    main()

"""``python -m bench.gpu_check``: the one prepared GPU proof (issue 26).

One time-boxed command for a bare CUDA machine: environment, the ``gpu`` tests, the flash attention kernel
against the explicit path on the hardware, the GPT-2-small training step (flash / explicit / compiled /
dropout), the attention and element-wise kernels against their baselines, and a short ``finetune`` with a
checkpoint and a resume. Each stage runs as its own process under its share of ``--budget-s`` and writes its
JSON and a line of ``gpu_check.md`` into ``--out`` as soon as it finishes, so a run killed at any moment keeps
what finished. ``--dry-run`` (any machine) lists the stages, their budgets and commands and checks that each
stage's module imports and its arguments parse. See ``stages.py`` for the list and ``runner.py`` for the loop.
"""

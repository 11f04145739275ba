"""``python -m bench.gpu_check``: see :mod:`bench.gpu_check`."""

from bench.gpu_check.runner import main

if __name__ == "__main__":
    raise SystemExit(main())

"""What a run's step times can be compared under: the machine, the device, processes, threads and load."""

from __future__ import annotations

import os
import platform
from typing import Any


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def run_conditions(processes: int = 1) -> dict[str, Any]:
    """``{host, device, processes, threads, load_start}``: recorded when training starts (``load_end`` at its end)."""
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return {
        "host": platform.node() or "unknown",
        "device": device,
        "processes": processes,
        "threads": torch.get_num_threads(),
        "load_start": load_average(),
    }

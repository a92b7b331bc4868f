"""One line describing the machine a benchmark ran on (CPU model, cores, torch threads, GPU) and the date."""

from __future__ import annotations

import datetime
import os
import platform


def describe() -> str:
    """E.g. '2026-11-24, Linux x86_64, Intel Xeon ... (2 cores), Python 3.11.7'."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return (f"{datetime.date.today().isoformat()}, {platform.system()} {platform.machine()}, {cpu} "
            f"({os.cpu_count()} cores){gpu}, Python {platform.python_version()}")

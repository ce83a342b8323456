"""Training metrics: `<output_dir>/metrics.jsonl` (one JSON object per logged step) + TensorBoard,
and the peak FLOP/s that MFU is measured against."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from megatron_mdm.utils import atomic_write_text

# Dense BF16 peak (no sparsity), TFLOP/s per device.
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0}


def peak_tflops_per_device(configured: float | None) -> float:
    """Configured value, else a table lookup for the GPU, else a CPU estimate (cores x 32 FP32
    FLOP/cycle (2 AVX2 FMA units) x 2.5 GHz), good enough to compare CPU runs with each other."""
    if configured:
        return configured
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in GPU_PEAK_TFLOPS.items():
            if key in name:
                return value
        return 312.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) * 32 * 2.5e9 / 1e12


class MetricsWriter:
    def __init__(self, output_dir: str, tensorboard: bool, resume_step: int):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines a crashed run logged past its last checkpoint, so the file is
        the loss curve of one uninterrupted run."""
        if not self.path.exists():
            return
        keep = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()
        }
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

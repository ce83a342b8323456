"""Training metrics: `<output_dir>/metrics.jsonl` (one JSON object per logged step), TensorBoard,
optionally Weights & Biases, and `samples.jsonl`; the peak FLOP/s that MFU is measured against.

A resumed run continues one curve: lines and TensorBoard points past the resume step (logged by
a run that crashed after its last checkpoint) are dropped (`purge_step`), so every sink shows the
loss of one uninterrupted run. Training scalars go under `train/`, validation under `val/`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import uuid
from pathlib import Path

from megatron_mdm.config import ConfigError, ExperimentConfig, to_dict
from megatron_mdm.utils import atomic_write_text

# Dense BF16 peak (no sparsity), TFLOP/s per device.
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0}


def peak_tflops_per_device(configured: float | None) -> float | None:
    """The configured value, else the table's value for a known GPU; None (MFU n/a) on CPUs and
    unknown GPUs, where any assumed peak would make the number meaningless."""
    if configured:
        return configured
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in GPU_PEAK_TFLOPS.items():
            if key in name:
                return value
    return None


def check_wandb(cfg: ExperimentConfig) -> None:
    """`logging.wandb` without the package: one line at start-up, not a traceback mid-run."""
    if cfg.logging.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "is on but the wandb package is not installed (pip install wandb), or set "
            "logging.wandb=false",
            source=cfg.source,
            key="logging.wandb",
        )


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _keep_until(path: Path, step: int) -> None:
    """Drop the lines of a JSON-lines file whose step is past `step`."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


class _Wandb:
    """One W&B run per output_dir: its id is kept in `<output_dir>/wandb/run_id`, so a resumed
    run appends to the same W&B run (W&B cannot drop points past the resume step)."""

    def __init__(self, cfg: ExperimentConfig):
        import wandb

        out = Path(cfg.train.output_dir)
        id_file = out / "wandb" / "run_id"
        id_file.parent.mkdir(parents=True, exist_ok=True)
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:16]
        atomic_write_text(id_file, run_id + "\n")
        self.run = wandb.init(
            project=cfg.logging.wandb_project,
            name=out.name,
            id=run_id,
            resume="allow",
            dir=str(out),
            mode=cfg.logging.wandb_mode,
            config=to_dict(cfg),
        )

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MetricsWriter:
    def __init__(self, cfg: ExperimentConfig, resume_step: int):
        out = Path(cfg.train.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "metrics.jsonl"
        self.samples_path = out / "samples.jsonl"
        # On resume, drop what a crashed run logged past its last checkpoint.
        _keep_until(self.path, resume_step)
        _keep_until(self.samples_path, resume_step)
        self._file = open(self.path, "a")
        self._tb = None
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the earlier events at steps >= resume_step + 1.
            self._tb = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=resume_step + 1)
        self._wandb = _Wandb(cfg) if cfg.logging.wandb else None

    def _append(self, record: dict) -> None:
        self._file.write(json.dumps({k: _finite_or_none(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def _scalars(self, section: str, values: dict, step: int) -> None:
        scalars = {
            f"{section}/{key}": value
            for key, value in values.items()
            if isinstance(value, int | float) and math.isfinite(value)
        }
        if self._tb is not None:
            for tag, value in scalars.items():
                self._tb.add_scalar(tag, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step)

    def write(self, record: dict) -> None:
        """One training record (`step` plus scalars); TensorBoard tags `train/<key>`."""
        self._append(record)
        self._scalars("train", {k: v for k, v in record.items() if k != "step"}, record["step"])

    def write_validation(self, step: int, loss: float) -> None:
        """metrics.jsonl `{"step", "val_loss"}`; TensorBoard `val/loss`."""
        self._append({"step": step, "val_loss": loss})
        self._scalars("val", {"loss": loss}, step)

    def write_samples(self, step: int, prompt: str, samples: list[str]) -> None:
        """samples.jsonl `{"step", "prompt", "samples"}`; TensorBoard text `samples`."""
        with open(self.samples_path, "a") as f:
            f.write(json.dumps({"step": step, "prompt": prompt, "samples": samples}) + "\n")
        if self._tb is not None:
            text = "\n\n".join(f"`{prompt}` {s}" for s in samples)
            self._tb.add_text("samples", text, step)
        if self._wandb is not None:
            self._wandb.log({"samples": "\n\n".join(samples)}, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.close()

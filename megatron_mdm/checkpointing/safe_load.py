"""Read torch checkpoint files without running code from them: the one gate every reader uses.

A `.pt` file is a pickle, and unpickling calls whatever global the file names: a checkpoint
copied from elsewhere (or edited) can run code as soon as DeepSpeed's loader, which uses
`torch.load(weights_only=False)`, opens it. Before any such loader runs, and for every file we
read ourselves, `load_tensors` loads the file with `torch.load(weights_only=True)` under an
explicit allow-list of the plain data classes DeepSpeed really pickles into model, optimizer and
ZeRO files (found by saving real checkpoints at ZeRO 0/1/2/3, TP/PP, bf16/fp32 and offload and
loading them this way). Anything else is refused in one line naming the file and the global
(docs/design.md §8). With `mmap=True` only the pickle is parsed; tensor storage is not read, so
the check costs little even for large shards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch

from megatron_mdm.checkpointing.run_dir import CheckpointError

_GLOBAL = re.compile(r"unsupported global:? GLOBAL ([\w.]+)", re.IGNORECASE)


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file that would run code (or build objects we do not know) when unpickled."""


def deepspeed_globals() -> list:
    """The non-tensor classes DeepSpeed pickles into checkpoint files, all plain data: ZeRO's
    stage enum, the (static) loss-scaler settings and the fragment addresses of ZeRO-1/2 and
    bf16 optimizer shards. Allowing exactly these keeps the unpickler closed to anything else."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address]


def refusal(path: Path, exc: Exception) -> CheckpointError:
    """The one-line error for a file that `torch.load(weights_only=True)` rejected."""
    found = _GLOBAL.search(str(exc))
    if found:
        return UnsafeCheckpointError(
            f"{path}: refusing to load: it contains the Python global {found.group(1)}, which "
            "is not a tensor or a known DeepSpeed data class"
        )
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return CheckpointError(f"{path}: cannot be read as tensors ({lines[0] if lines else exc!r})")


def load_tensors(path: str | Path, mmap: bool = True):
    """The content of a torch file: tensors, containers, numbers, strings and the DeepSpeed
    data classes above, never anything that runs code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: missing shard")
    try:
        with torch.serialization.safe_globals(deepspeed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - pickle.UnpicklingError and torch's many others
        raise refusal(path, exc) from None


def check_files(paths: Iterable[str | Path]) -> None:
    """Prove each file loads through the gate (before a loader that unpickles freely opens it)."""
    for path in paths:
        load_tensors(path)


def torch_files(ckpt_dir: str | Path, pattern: str = "*.pt") -> list[Path]:
    return sorted(Path(ckpt_dir).glob(pattern))


def check_checkpoint(ckpt_dir: str | Path, mp_rank: int | None = None) -> None:
    """Every `.pt` file of a checkpoint folder, or, with `mp_rank`, the files DeepSpeed opens on
    a rank of that model-parallel rank (its model states and every data-parallel ZeRO shard of
    it, which ZeRO-1/2 reads in full) plus any file that belongs to no model-parallel rank."""
    files = torch_files(ckpt_dir)
    if mp_rank is not None:
        own = f"mp_rank_{mp_rank:02d}_"
        files = [f for f in files if own in f.name or "mp_rank_" not in f.name]
    check_files(files)

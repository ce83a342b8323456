"""Process-group and megatron-core parallel-state set-up for any launcher, on GPU or CPU."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from dataclasses import dataclass

import torch

from megatron_mdm.config import ExperimentConfig, check_world_size
from megatron_mdm.parallel.cpu_compat import apply_cpu_compat, seed_model_parallel_rng
from megatron_mdm.parallel.launch_env import detect_launch_env, export_torch_env

# deepspeed.ops.op_builder.cpu.comm.ShareMemCommBuilder.NAME
SHM_ALLREDUCE_OP = "deepspeed_shm_comm"


@dataclass(frozen=True)
class ParallelContext:
    rank: int
    world_size: int
    local_rank: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    device: torch.device
    launcher: str

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def is_logging_rank(self) -> bool:
        """Global rank 0 logs and writes run-level files (metrics, meta)."""
        return self.rank == 0


def prepare_accelerator() -> torch.device:
    """Pick the device and make DeepSpeed / megatron-core usable on it. Call before importing
    deepspeed: DeepSpeed fixes its accelerator at import time."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

    apply_cpu_compat()
    return torch.device("cpu")


OP_BUILT = re.compile(r"^DeepSpeed \S+ built successfully$")


@contextlib.contextmanager
def _drop_stdout_lines(pattern: re.Pattern):
    """Capture print()s to stdout; pass those not matching `pattern` on to stderr."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        kept = [ln for ln in buffer.getvalue().splitlines() if not pattern.match(ln.strip())]
        if kept:
            print("\n".join(kept), file=sys.stderr)


def init_distributed(cfg: ExperimentConfig) -> ParallelContext:
    launch = detect_launch_env()
    export_torch_env(launch)
    device = prepare_accelerator()
    if device.type == "cuda":
        torch.cuda.set_device(launch.local_rank)
        device = torch.device("cuda", launch.local_rank)
    # DeepSpeed print()s "DeepSpeed <op> built successfully" whenever it loads its CPU
    # shared-memory op, on every command; that line is dropped, anything else it prints goes to
    # stderr, so that `mdm generate | ...` stdout holds only results. Errors still raise.
    with _drop_stdout_lines(OP_BUILT):
        import deepspeed

        if device.type == "cpu":
            without_shm_allreduce(deepspeed)
        deepspeed.init_distributed(
            dist_backend="nccl" if device.type == "cuda" else "gloo",
            auto_mpi_discovery=False,
            verbose=False,
        )
    dp_size = check_world_size(cfg, launch.world_size)
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(
            tensor_model_parallel_size=cfg.parallel.tensor,
            pipeline_model_parallel_size=cfg.parallel.pipeline,
        )
    seed_model_parallel_rng(cfg.train.seed)
    return ParallelContext(
        rank=launch.rank,
        world_size=launch.world_size,
        local_rank=launch.local_rank,
        tp_rank=ps.get_tensor_model_parallel_rank(),
        tp_size=cfg.parallel.tensor,
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        pp_size=cfg.parallel.pipeline,
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=dp_size,
        device=device,
        launcher=launch.launcher,
    )


def without_shm_allreduce(deepspeed) -> None:
    """Plain gloo on CPU: mark DeepSpeed's shared-memory allreduce op as not compatible, so its
    communication backend does not JIT-build it (docs/design.md §9).

    DeepSpeed builds the op (g++, 30-120 s, under a lock file in ~/.cache/torch_extensions that
    a process killed mid-build leaves behind, making every later launch wait forever) whenever
    its torch backend starts on CPU, yet only `deepspeed.comm.inference_all_reduce` (DeepSpeed's
    inference tensor parallelism) uses it: the training collectives here (megatron-core's
    TP/PP, DeepSpeed's DP and ZeRO reductions) are plain torch.distributed calls on gloo either
    way. `__compatible_ops__` is DeepSpeed's own table of usable ops, read by `build_shm_op`."""
    deepspeed.ops.__compatible_ops__[SHM_ALLREDUCE_OP] = False


def shutdown(barrier: bool = True) -> None:
    """Tear down megatron's groups and the process group; ``barrier=False`` after a failure,
    when a peer may already be gone and a barrier would wait for it forever."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if torch.distributed.is_initialized():
        if barrier:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()

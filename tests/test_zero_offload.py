"""ZeRO optimizer CPU offload (`parallel.offload_optimizer`) without DeepSpeed's compiled CPU Adam.

Without CUDA the engine gives DeepSpeed the client torch AdamW with
`zero_force_ds_cpu_optimizer: false`; the offloaded fp32 partitions are stepped by it. The check
is independent of the code path under test: the same run without offload (ZeRO-2 keeps the
partitions in place) must give the same losses.
"""

from __future__ import annotations

import pytest
import torch
from helpers import QUICKSTART, SCRATCH_RUN, TINY_MODEL, read_metrics, run_mdm

from megatron_mdm.config import load_config

STEPS = 3
RUN = [
    *TINY_MODEL,
    "parallel.zero_stage=2",
    "train.micro_batch_size=4",
    "train.global_batch_size=8",  # two micro-batches: gradient accumulation into the partitions
    f"train.max_steps={STEPS}",
    "train.warmup_steps=0",
    *SCRATCH_RUN,
]


def test_engine_offloads_with_the_client_torch_optimizer(single_rank_world, monkeypatch, tmp_path):
    """Also: an engine built in-process (no `init_distributed`) does not JIT-build DeepSpeed's
    CPU shared-memory allreduce op either (g++, ~30 s; docs/design.md §9)."""
    from megatron.core import parallel_state as ps

    from megatron_mdm.model.builder import build_model
    from megatron_mdm.model.vocab import VocabLayout
    from megatron_mdm.parallel.distributed import ParallelContext
    from megatron_mdm.training.engine import build_engine

    for name, value in (("LOCAL_RANK", "0"), ("RANK", "0"), ("WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)  # what a launcher sets; DeepSpeed asserts on them
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))
    cfg = load_config(None, [*RUN, "parallel.offload_optimizer=true"])
    ctx = ParallelContext(
        rank=0, world_size=1, local_rank=0, tp_rank=0, tp_size=1, pp_rank=0, pp_size=1,
        dp_rank=0, dp_size=ps.get_data_parallel_world_size(), device=torch.device("cpu"),
        launcher="none",
    )  # fmt: skip
    engine = build_engine(cfg, build_model(cfg, VocabLayout.build(100, None, 64, 1), False), ctx)
    assert engine.zero_optimization_stage() == 2
    assert engine.zero_cpu_offload() and engine.optimizer.cpu_offload
    assert type(engine.basic_optimizer) is torch.optim.AdamW
    built = tmp_path / "torch_extensions"
    assert not built.exists() or not any(built.iterdir()), sorted(built.iterdir())


@pytest.mark.slow
def test_offload_matches_no_offload(tmp_path):
    losses = {}
    for offload in ("false", "true"):
        out = tmp_path / offload
        run_mdm(["train", QUICKSTART, *RUN, f"parallel.offload_optimizer={offload}",
                 f"train.output_dir={out}"])  # fmt: skip
        losses[offload] = read_metrics(out)
    assert [r["step"] for r in losses["true"]] == list(range(1, STEPS + 1))
    for want, have in zip(losses["false"], losses["true"]):
        assert have["loss"] == pytest.approx(want["loss"], rel=1e-6), want["step"]
        assert have["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5), want["step"]

"""The rules across sections: the parallel layout against the model's shape, FP8 GEMM shapes, and
the world size once a job is launched. Each section checks its own fields first
(``ExperimentConfig.validate``), so these may assume sane values in every section."""

from __future__ import annotations

from typing import TYPE_CHECKING

from megatron_mdm.config.checks import ConfigError, Fail

if TYPE_CHECKING:
    from megatron_mdm.config.schema import ExperimentConfig

__all__ = [
    "check_adaptation",
    "check_block",
    "check_fp8",
    "check_layout",
    "check_sampling",
    "check_world_size",
]


def check_layout(cfg: ExperimentConfig, fail: Fail) -> None:
    """Tensor and sequence parallelism against the model's shape."""
    m, p = cfg.model, cfg.parallel
    if m.sequence_parallel and p.tensor == 1:
        fail("model.sequence_parallel", "needs parallel.tensor > 1 (it splits TP activations)")
    for what, n in (
        ("model.num_attention_heads", m.num_attention_heads),
        ("query groups (model.num_query_groups)", m.kv_groups),
        ("model ffn size", m.ffn_size),
    ):
        if n % p.tensor:
            fail("parallel.tensor", f"{p.tensor} does not divide {what} = {n}")
    if m.num_layers % p.pipeline:
        fail(
            "parallel.pipeline",
            f"{p.pipeline} does not divide model.num_layers = {m.num_layers}",
        )


def check_block(cfg: ExperimentConfig, fail: Fail) -> None:
    """Block diffusion (docs/design.md §11): a block size that divides the sequence, at every
    step of the schedule, ending at the block size the model is sampled and scored with; and
    no block settings on the other objectives, where they would be silently ignored."""
    d, seq = cfg.diffusion, cfg.model.seq_length
    if cfg.model.objective != "block":
        for key, value in (
            ("diffusion.block_size", d.block_size),
            ("diffusion.block_size_schedule", d.block_size_schedule),
        ):
            if value is not None:
                fail(key, f"only used by model.objective=block (this is {cfg.model.objective})")
        return
    if d.block_size is None:
        fail("diffusion.block_size", "required for model.objective=block (tokens per block)")
    if seq % d.block_size:
        fail("diffusion.block_size", f"{d.block_size} does not divide model.seq_length = {seq}")
    for step, size in d.block_size_schedule or ():
        if seq % size:
            fail(
                "diffusion.block_size_schedule",
                f"block size {size} (from step {step}) does not divide model.seq_length = {seq}",
            )
    if d.block_size_schedule and d.block_size_schedule[-1][1] != d.block_size:
        fail(
            "diffusion.block_size_schedule",
            f"ends at block size {d.block_size_schedule[-1][1]}, but diffusion.block_size = "
            f"{d.block_size} (the block size the model is sampled with)",
        )


def check_adaptation(cfg: ExperimentConfig, fail: Fail) -> None:
    """AR-to-MDM recipes (docs/design.md §13.4-13.5) act on the bidirectional MDM only: an ARM
    already predicts the next token under a causal mask, and block diffusion has its own mask and
    its own [x_t; x_0] layout."""
    d, objective = cfg.diffusion, cfg.model.objective
    if objective == "mdm":
        return
    if d.shift:
        fail("diffusion.shift", f"only used by model.objective=mdm (this is {objective})")
    if d.attention_anneal_steps:
        fail(
            "diffusion.attention_anneal_steps",
            f"only used by model.objective=mdm (this is {objective})",
        )


def check_sampling(cfg: ExperimentConfig, fail: Fail) -> None:
    """Training-time samples (prompt + generated tokens) fit in the model's sequence length."""
    t, m = cfg.train, cfg.model
    if t.sample_interval > 0 and t.sample_length >= m.seq_length:
        fail(
            "train.sample_length",
            f"{t.sample_length} leaves no room for the prompt within model.seq_length = "
            f"{m.seq_length}",
        )


def check_fp8(cfg: ExperimentConfig, fail: Fail) -> None:
    """FP8 GEMM shapes, per tensor-parallel rank. The local layers (kernels/fp8_linear.py,
    through torch._scaled_mm) need every feature size to be a multiple of 16, pad the token
    rows themselves and scale from the current amax only. Transformer Engine needs input
    features % 16, output features % 8 and token rows (micro-batch x length, any cropped
    length) % 8."""
    m, t, tp = cfg.model, cfg.train, cfg.parallel.tensor
    local = m.transformer_impl == "local"
    impl = f"train.precision=fp8 with model.transformer_impl={m.transformer_impl}"
    if local and t.fp8_recipe == "delayed":
        fail(
            "train.fp8_recipe",
            "delayed scaling needs model.transformer_impl=transformer_engine; the local FP8 "
            "layers scale from the current amax (train.fp8_recipe=current)",
        )
    head_dim = m.hidden_size // m.num_attention_heads
    qkv_width = (m.num_attention_heads + 2 * m.kv_groups) * head_dim // tp
    for key, what, size, align in (
        ("model.hidden_size", "model.hidden_size", m.hidden_size, 16),
        ("model.hidden_size", "model.hidden_size / parallel.tensor", m.hidden_size // tp, 16),
        ("model.ffn_hidden_size", "the FFN size / parallel.tensor", m.ffn_size // tp, 16),
        (
            "model.num_query_groups",
            "the QKV width (heads + 2 * query groups) * head dim / parallel.tensor",
            qkv_width,
            16 if local else 8,
        ),
    ):
        if size % align:
            why = "torch._scaled_mm" if local else "FP8 tensor-core GEMMs"
            fail(key, f"{impl} needs {what} to be a multiple of {align} ({why}), got {size}")
    if local:
        return
    if cfg.diffusion.var_len_prob > 0 and t.micro_batch_size % 8:
        fail(
            "train.micro_batch_size",
            f"{impl} needs token rows (micro-batch x length) divisible by 8 at every cropped "
            f"length: use a multiple of 8 (got {t.micro_batch_size}) or "
            "diffusion.var_len_prob=0",
        )
    if (t.micro_batch_size * m.seq_length) % 8:
        fail(
            "train.micro_batch_size",
            f"{impl} needs train.micro_batch_size x model.seq_length divisible by 8, got "
            f"{t.micro_batch_size} x {m.seq_length}",
        )


def check_world_size(cfg: ExperimentConfig, world_size: int) -> int:
    """Return the data-parallel size for ``world_size`` ranks, or say which setting is off.

    Kept out of ``validate`` because the world size is only known once the job is launched.
    """
    tp, pp = cfg.parallel.tensor, cfg.parallel.pipeline
    if world_size < 1 or world_size % (tp * pp):
        raise ConfigError(
            f"world size {world_size} is not divisible by parallel.tensor * parallel.pipeline "
            f"= {tp} * {pp} = {tp * pp}",
            source=cfg.source,
            key="parallel.tensor" if tp > 1 else "parallel.pipeline",
        )
    dp = world_size // (tp * pp)
    mbs, gbs = cfg.train.micro_batch_size, cfg.train.global_batch_size
    if gbs % (mbs * dp):
        raise ConfigError(
            f"{gbs} is not divisible by train.micro_batch_size * data-parallel size "
            f"= {mbs} * {dp} = {mbs * dp} (world size {world_size}, tensor {tp}, pipeline {pp})",
            source=cfg.source,
            key="train.global_batch_size",
        )
    return dp

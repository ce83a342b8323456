"""Learning-rate schedules (docs/design.md §10): linear warmup, then cosine decay to min_lr (SMDM),
warmup-stable-decay (LLaDA) or constant.

The schedule is a pure function of the step, handed to torch's LambdaLR (whose state DeepSpeed
checkpoints and restores), so a resumed run continues on the same curve, and a weights-only
resume at step k can fast-forward to it.
"""

from __future__ import annotations

import math

from megatron_mdm.config import TrainConfig


def lr_at(step: int, train: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    warmup, end = train.effective_warmup, train.decay_steps
    if warmup > 0 and step < warmup:
        return train.lr * (step + 1) / warmup
    if train.lr_schedule == "constant":
        return train.lr
    if train.lr_schedule == "wsd":
        start = end - math.floor(train.lr_decay_fraction * (end - warmup) + 0.5)
        if step >= end:
            return train.min_lr
        if step < start:
            return train.lr
        return train.lr - (train.lr - train.min_lr) * (step - start) / (end - start)
    decay = end - warmup
    if decay <= 0:
        return train.min_lr
    progress = min(1.0, (step - warmup) / decay)
    return train.min_lr + 0.5 * (train.lr - train.min_lr) * (1.0 + math.cos(math.pi * progress))


def lr_multiplier(train: TrainConfig):
    """For torch's LambdaLR (whose state DeepSpeed checkpoints and restores)."""
    return lambda step: lr_at(step, train) / train.lr


def warmup_warning(train: TrainConfig) -> str | None:
    """The start-up warning for a warmup longer than the run's decay (it is clamped)."""
    if train.warmup_steps <= train.decay_steps:
        return None
    return (
        f"warning: train.warmup_steps = {train.warmup_steps} is longer than the decay "
        f"(train.lr_decay_steps or train.max_steps = {train.decay_steps}): clamped to "
        f"{train.effective_warmup}"
    )

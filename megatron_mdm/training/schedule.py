"""Learning-rate schedule: linear warmup, cosine decay to min_lr, constant after (SMDM)."""

from __future__ import annotations

import math

from megatron_mdm.config import TrainConfig


def lr_at(step: int, train: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if train.warmup_steps > 0 and step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    decay = train.decay_steps - train.warmup_steps
    if decay <= 0:
        return train.min_lr
    progress = min(1.0, (step - train.warmup_steps) / decay)
    return train.min_lr + 0.5 * (train.lr - train.min_lr) * (1.0 + math.cos(math.pi * progress))


def lr_multiplier(train: TrainConfig):
    """For torch's LambdaLR (whose state DeepSpeed checkpoints and restores)."""
    return lambda step: lr_at(step, train) / train.lr

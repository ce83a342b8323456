"""Oracle of `kernels/chunked_ce.py`: the whole output layer and cross-entropy in plain torch.

All logits [n, V] at once, autograd for every gradient, `torch.nn.functional.cross_entropy` for
the loss. No code is shared with the kernel; one process, the whole (unsharded) vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row CE [n] (fp32): the logits in the parameter dtype, plus `bias`, upcast, then CE."""
    logits = F.linear(hidden, weight)
    if bias is not None:
        logits = logits + bias.detach().to(logits.dtype)
    return F.cross_entropy(logits.float(), targets, reduction="none")

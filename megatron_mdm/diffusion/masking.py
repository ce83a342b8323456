"""Forward masking of DESIGN.md §3, as a pure function of (seed, key, sample index).

Every random draw for a sample comes from a generator seeded by the experiment seed, a key (the
training step, or e.g. ("valid", i) for fixed evaluation masks) and the sample's position in the
global batch, so the masks do not depend on how the global batch is split over data-parallel ranks
and micro-batches, nor on whether the run was resumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_mdm.model.init import stable_seed


@dataclass
class MaskedBatch:
    x0: torch.Tensor  # [B, L] clean tokens
    xt: torch.Tensor  # [B, L] tokens with masked positions replaced by mask_id
    masked: torch.Tensor  # [B, L] bool
    p_mask: torch.Tensor  # [B] masking probability per sequence


def _generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(stable_seed(*parts))


def sample_t(seed: int, key, batch_indices: list[int], global_batch: int, how: str):
    """t in [0, 1) per sample; `stratified` spreads one uniform draw evenly over the global batch."""
    if how == "stratified":
        u = torch.rand((), generator=_generator(seed, key, "t-stratified"), dtype=torch.float64)
        idx = torch.tensor(batch_indices, dtype=torch.float64)
        return torch.remainder(u + idx / global_batch, 1.0)
    draws = [
        torch.rand((), generator=_generator(seed, key, b, "t"), dtype=torch.float64)
        for b in batch_indices
    ]
    return torch.stack(draws)


def crop_length(seed: int, key, first_index: int, seq_length: int, prob: float) -> int:
    """Variable-length training: with probability `prob` a micro-batch is cropped to U{1..L}."""
    if prob <= 0:
        return seq_length
    gen = _generator(seed, key, first_index, "crop")
    if torch.rand((), generator=gen).item() >= prob:
        return seq_length
    return int(torch.randint(1, seq_length + 1, (), generator=gen).item())


def forward_mask(
    x0: torch.Tensor,
    seed: int,
    key,
    batch_indices: list[int],
    global_batch: int,
    mask_id: int,
    eps: float,
    t_sampling: str,
) -> MaskedBatch:
    """Mask each token of sequence b with probability p_b = (1 - eps) t_b + eps."""
    t = sample_t(seed, key, batch_indices, global_batch, t_sampling)
    p = ((1.0 - eps) * t + eps).to(torch.float32)
    length = x0.shape[1]
    uniforms = torch.stack(
        [torch.rand(length, generator=_generator(seed, key, b, "mask")) for b in batch_indices]
    )
    masked = uniforms < p[:, None]
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return MaskedBatch(x0=x0, xt=xt, masked=masked, p_mask=p)

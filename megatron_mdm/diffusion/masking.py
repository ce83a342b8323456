"""Forward masking (docs/design.md §3, §4), as a pure function of (seed, key, sample index).

Every random draw for a sample comes from a generator seeded by the experiment seed, a key (the
training step, or e.g. ("valid", i) for fixed evaluation masks) and the sample's position in the
global batch, so the masks do not depend on how the global batch is split over data-parallel ranks
and micro-batches, nor on whether the run was resumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_mdm.utils import keyed_generator


@dataclass
class MaskedBatch:
    x0: torch.Tensor  # [B, L] clean tokens
    xt: torch.Tensor  # [B, L] tokens with masked positions replaced by mask_id
    masked: torch.Tensor  # [B, L] bool
    p_mask: torch.Tensor  # [B] masking probability per sequence, or [B, L] per token (blocks)


def sample_t(seed: int, key, batch_indices: list[int], global_batch: int, how: str):
    """t in [0, 1) per sample; `stratified` spreads one uniform draw evenly over the global batch."""
    if how == "stratified":
        u = torch.rand(
            (), generator=keyed_generator(seed, key, "t-stratified"), dtype=torch.float64
        )
        idx = torch.tensor(batch_indices, dtype=torch.float64)
        return torch.remainder(u + idx / global_batch, 1.0)
    return keyed_uniforms(seed, key, batch_indices, "t", dtype=torch.float64)


def crop_length(seed: int, key, first_index: int, seq_length: int, prob: float) -> int:
    """Variable-length training: with probability `prob` a micro-batch is cropped to U{1..L}."""
    if prob <= 0:
        return seq_length
    gen = keyed_generator(seed, key, first_index, "crop")
    if torch.rand((), generator=gen).item() >= prob:
        return seq_length
    return int(torch.randint(1, seq_length + 1, (), generator=gen).item())


def keyed_uniforms(
    seed: int, key, positions, tag: str, size: tuple[int, ...] = (), dtype=torch.float32
) -> torch.Tensor:
    """[len(positions), *size] uniforms in [0, 1); sample p's from its own generator
    (seed, key, p, tag), so a sample's draws do not depend on which others share its batch."""
    return torch.stack(
        [
            torch.rand(size, generator=keyed_generator(seed, key, p, tag), dtype=dtype)
            for p in positions
        ]
    )


def masking_probability(t: torch.Tensor, eps: float) -> torch.Tensor:
    """p = (1 - eps) t + eps: the floor eps keeps the 1/p loss weight finite."""
    return ((1.0 - eps) * t + eps).to(torch.float32)


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
    p = masking_probability(t, eps)
    uniforms = keyed_uniforms(seed, key, batch_indices, "mask", (x0.shape[1],))
    masked = uniforms < p[:, None]
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return MaskedBatch(x0=x0, xt=xt, masked=masked, p_mask=p)


def response_mask(
    prompt_lengths: torch.Tensor,
    length: int,
    seq_length: int,
    seed: int,
    key,
    positions,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SFT masking (docs/design.md §4): (masked [B, length] bool, p [B]). Sample b draws
    t ~ U[0, 1) and `seq_length` uniforms, whatever the padded `length`, so its mask at a given
    position is the same under any padding and micro-batch split; only positions at or after
    its prompt (the response and its EOS pads) can be masked."""
    t = keyed_uniforms(seed, key, positions, "sft-t", dtype=torch.float64)
    p = masking_probability(t, eps)
    uniforms = keyed_uniforms(seed, key, positions, "sft-mask", (seq_length,))[:, :length]
    in_response = torch.arange(length)[None, :] >= prompt_lengths[:, None]
    return (uniforms < p[:, None]) & in_response, p


def block_t(
    seed: int,
    key,
    batch_indices: list[int],
    global_batch: int,
    how: str,
    num_blocks: int,
    per_block: bool,
) -> torch.Tensor:
    """[b, num_blocks] float64 t of each block (docs/design.md §11). `per_block`: sample j draws
    its blocks' t from its own t generator, so block 0's t is the sequence t of `sample_t` (with
    one block, the mdm objective's draw); stratified spreads one offset over all G * n blocks of
    the global batch. Otherwise every block shares the sequence t."""
    if not per_block:
        return sample_t(seed, key, batch_indices, global_batch, how)[:, None].expand(-1, num_blocks)
    if how == "stratified":
        u = torch.rand(
            (), generator=keyed_generator(seed, key, "t-stratified"), dtype=torch.float64
        )
        idx = torch.tensor(batch_indices, dtype=torch.float64)[:, None] * num_blocks
        idx = idx + torch.arange(num_blocks, dtype=torch.float64)[None, :]
        return torch.remainder(u + idx / (global_batch * num_blocks), 1.0)
    return keyed_uniforms(seed, key, batch_indices, "t", (num_blocks,), dtype=torch.float64)


def block_forward_mask(
    x0: torch.Tensor,
    seed: int,
    key,
    batch_indices: list[int],
    global_batch: int,
    mask_id: int,
    eps: float,
    t_sampling: str,
    block_size: int,
    seq_length: int,
    per_block: bool,
) -> MaskedBatch:
    """Block diffusion masking: token i of sample j is masked with probability p of its block,
    p = (1 - eps) t + eps, from the same per-sample uniforms as `forward_mask`. t is drawn for
    the seq_length // block_size blocks of a full sample and cut to a cropped x0's blocks, so a
    crop changes no draw. `p_mask` is per token, [b, L']."""
    num_blocks = -(-seq_length // block_size)
    t = block_t(seed, key, batch_indices, global_batch, t_sampling, num_blocks, per_block)
    p_blocks = masking_probability(t, eps)
    length = x0.shape[1]
    p = p_blocks[:, torch.arange(length) // block_size]
    uniforms = keyed_uniforms(seed, key, batch_indices, "mask", (length,))
    masked = uniforms < p
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return MaskedBatch(x0=x0, xt=xt, masked=masked, p_mask=p.contiguous())

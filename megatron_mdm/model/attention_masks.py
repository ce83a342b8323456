"""Arbitrary boolean attention masks, built once per shape and reused (docs/design.md §11).

Masks here follow megatron-core's convention: a bool tensor [1, 1, S, S], True = masked out
(broadcast over batch and heads), the form `AttnMaskType.arbitrary` layers take. Two masks are
defined, both from a token's block index `k(p) = p div B`:
- `block_diffusion_mask(L, B)`: the block-diffusion training layout of 2L positions, the noisy
  copy x_t (positions 0..L-1) then the clean copy x_0 (L..2L-1). x_t block k sees x_t block k
  and x_0 blocks < k; x_0 block k sees x_0 blocks <= k.
- `block_causal_mask(S, B)`: one copy of S tokens, block k sees blocks <= k: what inference runs
  (finished blocks clean, the current block noisy), and for B = 1 the causal mask.

- `lookahead_mask(S, d)`: attention annealing (§13.5): query i sees keys j <= i + d; d = 0 is
  the causal mask, d >= S - 1 the bidirectional one.

The builders are `lru_cache`d by (length, block size, device), so a training run builds each
mask once, not per step. Core attention needs the mask in other forms (SDPA: True = attend;
flex_attention: a `BlockMask`); `attend_view` and `flex_block_mask` derive those once per mask
tensor and keep them beside it, so any other boolean [S, S] mask built once and reused (e.g. an
annealed causal-to-bidirectional mask) is converted once as well.
"""

from __future__ import annotations

import functools

import torch

_DERIVED_LIMIT = 32  # derived forms kept (a few masks per run: one per (length, block size))
_derived: dict[tuple[int, str], tuple[torch.Tensor, object]] = {}


def block_ids(length: int, block_size: int, device=None) -> torch.Tensor:
    """k(p) = p div B for positions 0..length-1 (the last block may be shorter: cropped)."""
    return torch.arange(length, device=device) // block_size


def block_diffusion_allowed(length: int, block_size: int, device=None) -> torch.Tensor:
    """[2L, 2L] bool, True = query row may attend to key column; the formula of §11."""
    k = block_ids(length, block_size, device).repeat(2)
    noisy = torch.arange(2 * length, device=device) < length
    q_k, kv_k = k[:, None], k[None, :]
    q_noisy, kv_noisy = noisy[:, None], noisy[None, :]
    from_noisy = (kv_noisy & (kv_k == q_k)) | (~kv_noisy & (kv_k < q_k))
    from_clean = ~kv_noisy & (kv_k <= q_k)
    return torch.where(q_noisy, from_noisy, from_clean)


def block_causal_allowed(length: int, block_size: int, device=None) -> torch.Tensor:
    """[S, S] bool, True = attend: block k(i) sees blocks <= k(i)."""
    k = block_ids(length, block_size, device)
    return k[None, :] <= k[:, None]


@functools.lru_cache(maxsize=64)
def _cached(kind: str, length: int, block_size: int, device: str) -> torch.Tensor:
    build = block_diffusion_allowed if kind == "diffusion" else block_causal_allowed
    return (~build(length, block_size, torch.device(device)))[None, None].contiguous()


def block_diffusion_mask(length: int, block_size: int, device) -> torch.Tensor:
    """[1, 1, 2L, 2L] megatron mask (True = masked out) of the training layout [x_t; x_0]."""
    return _cached("diffusion", length, block_size, str(device))


def block_causal_mask(length: int, block_size: int, device) -> torch.Tensor:
    """[1, 1, S, S] megatron mask (True = masked out) of one block-causal copy."""
    return _cached("causal", length, block_size, str(device))


def lookahead_allowed(length: int, lookahead: int, device=None) -> torch.Tensor:
    """[S, S] bool, True = attend: query i sees keys j <= i + lookahead (§13.5)."""
    pos = torch.arange(length, device=device)
    return pos[None, :] <= pos[:, None] + lookahead


@functools.lru_cache(maxsize=2)  # the look-ahead changes step to step: keep the current one
def _cached_lookahead(length: int, lookahead: int, device: str) -> torch.Tensor:
    return (~lookahead_allowed(length, lookahead, torch.device(device)))[None, None].contiguous()


def lookahead_mask(length: int, lookahead: int, device) -> torch.Tensor:
    """[1, 1, S, S] megatron mask (True = masked out) of an annealing step's look-ahead."""
    return _cached_lookahead(length, lookahead, str(device))


def _derive(mask: torch.Tensor, form: str, make):
    key = (id(mask), form)
    hit = _derived.get(key)
    if hit is not None and hit[0] is mask:
        return hit[1]
    value = make(mask)
    if len(_derived) >= _DERIVED_LIMIT:
        _derived.pop(next(iter(_derived)))
    _derived[key] = (mask, value)  # holding `mask` keeps its id from being reused
    return value


def attend_view(mask: torch.Tensor) -> torch.Tensor:
    """SDPA's form of a megatron mask (True = attend), computed once per mask tensor."""
    return _derive(mask, "attend", lambda m: ~m.bool())


def flex_block_mask(mask: torch.Tensor):
    """flex_attention's `BlockMask` of a megatron mask [.., S, S] (heads and batch broadcast),
    built once per mask tensor: its mask_mod reads the dense mask, so any pattern works, and
    fully masked tiles are skipped by the kernel."""
    from torch.nn.attention.flex_attention import create_block_mask

    def make(m: torch.Tensor):
        allowed = ~m.bool().reshape(m.shape[-2], m.shape[-1])

        def mask_mod(b, h, q_idx, kv_idx):
            return allowed[q_idx, kv_idx]

        return create_block_mask(
            mask_mod, None, None, allowed.shape[0], allowed.shape[1], device=str(m.device)
        )

    return _derive(mask, "flex", make)

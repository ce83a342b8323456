"""How full (TP=1) tensors map onto tensor-parallel shards, by parameter name.

One place knows the layouts, so initialisation, checkpoint conversion and resharding agree:
- column-parallel weights (embedding, output layer, QKV and its bias) split contiguously along
  dim 0: QKV is laid out per query group `[q_g, k_g, v_g]` and TP splits whole groups;
- the SwiGLU `linear_fc1` holds `[gate; up]`, and each rank holds its own `[gate_r; up_r]`;
- row-parallel weights (`linear_proj`, `linear_fc2`) split contiguously along dim 1;
- norms are replicated.
"""

from __future__ import annotations

import re

import torch

_COLUMN = ("word_embeddings.weight", "output_layer.weight", "linear_qkv.weight", "linear_qkv.bias")
_ROW = ("linear_proj.weight", "linear_fc2.weight")
_GATED = ("linear_fc1.weight",)
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def partition_kind(name: str) -> str:
    """'column' | 'row' | 'gated' | 'replicated' for a GPTModel parameter name."""
    if name.endswith(_GATED):
        return "gated"
    if name.endswith(_COLUMN):
        return "column"
    if name.endswith(_ROW):
        return "row"
    return "replicated"


def partition_dim(name: str) -> int | None:
    """The dimension TP splits, or None for replicated parameters."""
    return {"column": 0, "gated": 0, "row": 1}.get(partition_kind(name))


def shard(name: str, full: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    kind = partition_kind(name)
    if size == 1 or kind == "replicated":
        return full
    if kind == "column":
        return full.chunk(size, dim=0)[rank]
    if kind == "row":
        return full.chunk(size, dim=1)[rank]
    gate, up = full.chunk(2, dim=0)
    return torch.cat([gate.chunk(size, dim=0)[rank], up.chunk(size, dim=0)[rank]], dim=0)


def unshard(name: str, shards: list[torch.Tensor]) -> torch.Tensor:
    kind = partition_kind(name)
    if len(shards) == 1 or kind == "replicated":
        return shards[0]
    if kind == "column":
        return torch.cat(shards, dim=0)
    if kind == "row":
        return torch.cat(shards, dim=1)
    halves = [s.chunk(2, dim=0) for s in shards]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)


def full_shape(name: str, local_shape: torch.Size, size: int) -> tuple[int, ...]:
    shape = list(local_shape)
    kind = partition_kind(name)
    if kind in ("column", "gated"):
        shape[0] *= size
    elif kind == "row":
        shape[1] *= size
    return tuple(shape)


def global_name(name: str, layer_offset: int) -> str:
    """Local parameter name on a pipeline stage -> name in the unpartitioned model."""
    match = _LAYER.match(name)
    if not match:
        return name
    return f"decoder.layers.{int(match.group(1)) + layer_offset}." + name[match.end() :]

"""Deterministic weight initialisation, independent of the parallel layout.

Each parameter's full (unpartitioned) tensor is drawn from a generator seeded by the experiment
seed and the parameter's global name, then sliced for this rank. A model built at TP=2 or PP=2
therefore starts from exactly the weights of the TP=PP=1 model: the basis of the parity tests and
of reproducible runs on any cluster shape. (Megatron's default init depends on the TP size.)
"""

from __future__ import annotations

import math

import torch

from megatron_mdm.model import sharding
from megatron_mdm.utils import keyed_generator

_SCALED = ("linear_proj.weight", "linear_fc2.weight")


@torch.no_grad()
def initialize_parameters(
    model: torch.nn.Module,
    seed: int,
    std: float,
    num_layers: int,
    tp_rank: int,
    tp_size: int,
    layer_offset: int,
) -> None:
    """Normal(0, std) weights (output projections scaled by 1/sqrt(2 * layers)), unit norms,
    zero biases.

    Also marks tensor-parallel parameters (megatron-core only does so inside its own init, which
    we skip): DeepSpeed's and megatron's grad-norm code count replicated parameters once by it.
    """
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

    for name, param in model.named_parameters():
        gname = sharding.global_name(name, layer_offset)
        dim = sharding.partition_dim(name)
        if not hasattr(param, "tensor_model_parallel"):  # megatron marks biases itself
            set_tensor_model_parallel_attributes(
                param, dim is not None, -1 if dim is None else dim, 1
            )
        if name.endswith(".bias"):  # the QKV bias (model.qkv_bias)
            param.zero_()
            continue
        if param.dim() == 1:
            param.fill_(1.0)
            continue
        shape = sharding.full_shape(name, param.shape, tp_size)
        gen = keyed_generator(seed, gname)
        scale = std / math.sqrt(2.0 * num_layers) if gname.endswith(_SCALED) else std
        full = torch.empty(shape, dtype=torch.float32).normal_(0.0, scale, generator=gen)
        param.copy_(sharding.shard(name, full, tp_rank, tp_size))

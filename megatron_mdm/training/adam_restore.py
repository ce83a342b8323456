"""Put a resharded Adam state (fp32 master weights, moments, step) into a freshly built DeepSpeed
engine, so a run resumed in another layout continues as if never moved (docs/design.md §8).

The weights were loaded into the model before DeepSpeed wrapped it (`checkpointing.weights`);
this sets what the optimizer holds, through public APIs where DeepSpeed has them:
- ZeRO-0, fp32: DeepSpeed steps the client torch AdamW itself; its `load_state_dict` takes the
  moments and step per parameter.
- ZeRO-1/2 (any precision, offload too): `deepspeed.utils.safe_set_full_fp32_param` and
  `safe_set_full_optimizer_state` write each parameter's full fp32 master and moments into this
  rank's flat partitions. DeepSpeed creates Adam's state lazily at the first step, so the state
  of each flat partition is created here first (zeros and the step), then linked to the
  parameters with the optimizer's own `_lazy_init_hp_params_optimizer_state`.
Other engines (ZeRO-3, bf16 at ZeRO-0) are refused before anything is built (`supported`).
"""

from __future__ import annotations

import torch

from megatron_mdm.checkpointing.adam_state import ADAM_KEYS
from megatron_mdm.checkpointing.run_dir import CheckpointError
from megatron_mdm.config import ExperimentConfig


def supported(cfg: ExperimentConfig) -> bool:
    """Whether this run's engine can take a resharded Adam state."""
    stage = cfg.parallel.zero_stage
    return stage in (1, 2) or (stage == 0 and cfg.train.precision == "fp32")


def _step_tensor(step: int) -> torch.Tensor:
    return torch.tensor(float(step), dtype=torch.float32)


def _restore_torch(optimizer, model, local: dict, step: int) -> None:
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    state = {}
    for name, param in model.named_parameters():
        state[index[id(param)]] = {
            "step": _step_tensor(step),
            **{key: local[key][name] for key in ADAM_KEYS},
        }
    optimizer.load_state_dict(
        {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}
    )


def _restore_zero(optimizer, model, local: dict, step: int, where: str) -> None:
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    # ZeRO-1/2's flat fp32 partitions (DeepSpeed's BF16_Optimizer names them differently).
    flats = getattr(optimizer, "single_partition_of_fp32_groups", None)
    flats = flats if flats is not None else getattr(optimizer, "fp32_groups_flat_partition", None)
    if flats is None or not hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):
        raise CheckpointError(f"{where}: this DeepSpeed optimizer cannot take a resharded state")
    for flat in flats:
        optimizer.optimizer.state[flat] = {
            "step": _step_tensor(step),
            **{key: torch.zeros_like(flat) for key in ADAM_KEYS},
        }
    optimizer._hp_optimizer_states_linked = False
    optimizer._lazy_init_hp_params_optimizer_state()
    for name, param in model.named_parameters():
        safe_set_full_fp32_param(param, local["fp32"][name].to(param.device))
        for key in ADAM_KEYS:
            safe_set_full_optimizer_state(param, local[key][name].to(param.device), key)


@torch.no_grad()
def restore_adam(engine, model, local: dict, step: int, where: str) -> None:
    """`local`: "fp32", "exp_avg", "exp_avg_sq" -> this rank's local state dict (its TP/PP
    slice, as `canonical.shard_for_rank` cuts it)."""
    stage = engine.zero_optimization_stage()
    if stage in (1, 2):
        _restore_zero(engine.optimizer, model, local, step, where)
    elif stage == 0 and isinstance(engine.optimizer, torch.optim.Optimizer):
        _restore_torch(engine.optimizer, model, local, step)
    else:
        raise CheckpointError(f"{where}: Adam state cannot be restored into this engine")

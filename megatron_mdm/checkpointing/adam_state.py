"""Adam's state of a training checkpoint in canonical (TP=1/PP=1) form, so that a change of
layout keeps the optimizer and not only the weights (docs/design.md §8).

The fp32 master weights and both Adam moments (`exp_avg`, `exp_avg_sq`) have the shape of the
parameter they belong to and are split over TP ranks and PP stages exactly like it, so the
canonical machinery (`canonical.gather`, `canonical.shard_for_rank`) moves them to any layout.
Sources, read through `safe_load`'s gate only:
- ZeRO-0: the model-states file holds the torch optimizer's state dict (fp32), or DeepSpeed's
  unfused bf16 optimizer's (`optimizer_state_dict` plus per-parameter `fp32_groups`), indexed by
  parameter position in the two parameter groups `training.engine.parameter_groups` builds
  (matrices with weight decay, then 1-D norms without), in module order; every shape is checked.
  The unfused bf16 optimizer steps once at start-up with zero gradients, so its Adam step is one
  more than the training step; it is carried as it is (it is what its bias correction uses).
- ZeRO-1/2 (and offload): each data-parallel shard holds flat fp32 and moment partitions and
  `param_slice_mappings` (name -> start and length of its piece); pieces joined in
  data-parallel order and reshaped by the model-states file's `param_shapes` give each tensor,
  as DeepSpeed's own `ds_to_universal` reads them.
- A checkpoint written by `mdm convert reshard` with this state (`optimizer_state: true`):
  `{"module": fp32 master, "adam": {"step", "exp_avg", "exp_avg_sq"}}` per model-parallel rank.
ZeRO-3 shards are not read: resharding one keeps the weights only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_mdm.checkpointing.canonical import MODEL_STATES, gather, model_parallel_rank
from megatron_mdm.checkpointing.run_dir import CheckpointError, find_checkpoint, read_meta
from megatron_mdm.checkpointing.safe_load import check_checkpoint, load_tensors

ADAM_KEYS = ("exp_avg", "exp_avg_sq")
_DP_RANK = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


@dataclass
class AdamState:
    """Canonical fp32 master weights, Adam moments (key -> canonical dict) and the step count
    Adam's bias correction uses."""

    step: int
    master: dict[str, torch.Tensor]
    moments: dict[str, dict[str, torch.Tensor]]


def has_adam_state(meta: dict) -> bool:
    """Whether `load_adam_state` can read this checkpoint's optimizer state."""
    if meta.get("weights_only"):
        return bool(meta.get("optimizer_state"))
    return meta["config"]["parallel"]["zero_stage"] in (0, 1, 2)


def _param_groups(module: dict) -> list[list[str]]:
    """Parameter names in the order of `training.engine.parameter_groups`: decayed, then not."""
    names = [n for n in module if not n.endswith("_extra_state")]
    groups = [
        [n for n in names if module[n].dim() != 1],
        [n for n in names if module[n].dim() == 1],
    ]
    return [g for g in groups if g]  # DeepSpeed drops empty groups


def _rank_zero0(path: Path) -> tuple[dict, dict, set]:
    saved = load_tensors(path)
    module, opt = saved["module"], saved.get("optimizer")
    if not opt:
        raise CheckpointError(f"{path}: holds no optimizer state")
    torch_sd = opt.get("optimizer_state_dict", opt)  # bf16: DeepSpeed's wrapper around torch's
    fp32_groups = opt.get("fp32_groups")
    master, moments, steps = {}, {k: {} for k in ADAM_KEYS}, set()
    for g, (names, group) in enumerate(zip(_param_groups(module), torch_sd["param_groups"])):
        if len(names) != len(group["params"]):
            raise CheckpointError(
                f"{path}: optimizer group {g} has {len(group['params'])} parameters, the model "
                f"{len(names)}"
            )
        for j, (name, index) in enumerate(zip(names, group["params"])):
            state = torch_sd["state"].get(index)
            if state is None or tuple(state["exp_avg"].shape) != tuple(module[name].shape):
                raise CheckpointError(f"{path}: no Adam state of the shape of {name}")
            weights = module[name] if fp32_groups is None else fp32_groups[g][j]
            master[name] = weights.float()
            for key in ADAM_KEYS:
                moments[key][name] = state[key]
            steps.add(int(state["step"]))
    return master, moments, steps


def _rank_zero12(ckpt: Path, mp: int) -> tuple[dict, dict, set]:
    shapes = load_tensors(ckpt / MODEL_STATES.format(mp)).get("param_shapes")
    files = [f for f in ckpt.glob(f"*_mp_rank_{mp:02d}_optim_states.pt") if _DP_RANK.search(f.name)]
    if not files or not shapes:
        raise CheckpointError(f"{ckpt}: no ZeRO optimizer shards for model-parallel rank {mp}")
    files.sort(key=lambda f: int(_DP_RANK.search(f.name).group(1)))
    pieces: dict[str, dict[str, list]] = {k: {} for k in ("fp32", *ADAM_KEYS)}
    steps = set()
    for path in files:
        opt = load_tensors(path)["optimizer_state_dict"]
        base = opt["base_optimizer_state"]["state"]
        for g, mapping in enumerate(opt["param_slice_mappings"]):
            flat = {"fp32": opt["single_partition_of_fp32_groups"][g]}
            flat.update({k: base[g][k] for k in ADAM_KEYS})
            steps.add(int(base[g]["step"]))
            for name, frag in mapping.items():
                for key, tensor in flat.items():
                    pieces[key].setdefault(name, []).append(
                        tensor.narrow(0, frag.start, frag.numel)
                    )
    out = {k: {} for k in pieces}
    for group in shapes:
        for name, shape in group.items():
            for key in pieces:
                joined = torch.cat(pieces[key].get(name, [torch.empty(0)]))
                if joined.numel() != shape.numel():
                    raise CheckpointError(f"{files[0]}: ZeRO pieces of {name} do not add up")
                out[key][name] = joined.view(shape)
    return out.pop("fp32"), out, steps


def _rank_resharded(path: Path) -> tuple[dict, dict, set]:
    saved = load_tensors(path)
    adam = saved.get("adam")
    if adam is None:
        raise CheckpointError(f"{path}: holds no optimizer state")
    return saved["module"], {k: adam[k] for k in ADAM_KEYS}, {int(adam["step"])}


def load_adam_state(path: str | Path) -> tuple[AdamState, dict, Path]:
    """(canonical Adam state, meta, checkpoint dir) of a training checkpoint."""
    ckpt = find_checkpoint(path)
    meta = read_meta(ckpt)
    if not has_adam_state(meta):
        raise CheckpointError(
            f"{ckpt}: its optimizer state cannot be read (weights-only, or ZeRO-3 shards)"
        )
    check_checkpoint(ckpt)
    tp, pp = meta["parallel"]["tensor"], meta["parallel"]["pipeline"]
    stage = meta["config"]["parallel"]["zero_stage"]
    masters = [[{} for _ in range(tp)] for _ in range(pp)]
    moments = {k: [[{} for _ in range(tp)] for _ in range(pp)] for k in ADAM_KEYS}
    steps = set()
    for p in range(pp):
        for t in range(tp):
            mp = model_parallel_rank(p, t, tp)
            if meta.get("weights_only"):
                rank = _rank_resharded(ckpt / MODEL_STATES.format(mp))
            elif stage == 0:
                rank = _rank_zero0(ckpt / MODEL_STATES.format(mp))
            else:
                rank = _rank_zero12(ckpt, mp)
            masters[p][t] = rank[0]
            for key in ADAM_KEYS:
                moments[key][p][t] = rank[1][key]
            steps |= rank[2]
    if len(steps) != 1:
        raise CheckpointError(f"{ckpt}: Adam step counts differ between shards: {sorted(steps)}")
    state = AdamState(
        step=steps.pop(),
        master=gather(masters, meta, ckpt),
        moments={k: gather(moments[k], meta, ckpt) for k in ADAM_KEYS},
    )
    return state, meta, ckpt

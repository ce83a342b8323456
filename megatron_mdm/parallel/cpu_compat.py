"""Let megatron-core run on machines without CUDA (CPU + gloo), for development and CI.

megatron-core assumes a GPU in a handful of places that our code path reaches:

1. ``torch.cuda.current_device()`` as the device of buffers, RoPE frequencies and p2p shape
   tensors (``utils.GlobalMemoryBuffer``, ``rotary_pos_embedding``, ``tensor_parallel.layers``,
   ``pipeline_parallel.p2p_communication``);
2. the CUDA RNG tracker (``tensor_parallel.random``), forked around attention dropout even at
   dropout 0;
3. ``transformer.utils.get_default_causal_mask`` building the causal mask with ``device="cuda"``;
4. ``torch.zeros(..., device="cuda")`` token counters in ``pipeline_parallel.schedules``;
5. ``torch.cuda.synchronize()`` after p2p exchanges (unconditional when pipeline stages exchange
   shapes for variable sequence lengths); with no device there is nothing to wait for;
6. the CUDA generator state saved and restored around activation checkpointing
   (``tensor_parallel.random._get/_set_cuda_rng_state``): with no device there is no CUDA
   generator, so the state is empty (megatron saves the CPU generator separately);
7. the advice to set ``CUDA_DEVICE_MAX_CONNECTIONS=1`` that ``tensor_parallel.layers`` warns
   with at the first tensor-parallel GEMM: it tunes CUDA stream scheduling, so on CPU it is
   only noise and that one warning (message and module) is filtered.

On a machine without CUDA each of these would raise, so redirecting them to the CPU changes no
behaviour that could otherwise run. Nothing here is applied when CUDA is available: on GPUs the
stack runs megatron-core unmodified. The p2p ``torch.cuda.synchronize`` call is avoided through
configuration instead (``batch_p2p_comm=False`` on CPU, see ``model.builder``).
"""

from __future__ import annotations

import contextlib
import functools
import types
import warnings

import torch

_APPLIED = False


def cuda_available() -> bool:
    return torch.cuda.is_available()


def apply_cpu_compat() -> bool:
    """Install the CPU redirections once; returns True when they are active."""
    global _APPLIED
    if cuda_available():
        return False
    quiet_cpu_warnings()  # (7) on every call: callers may have reset the warning filters since
    if _APPLIED:
        return True
    torch.cuda.current_device = lambda: "cpu"  # (1)
    torch.cuda.synchronize = lambda device=None: None  # (5)
    _patch_causal_mask()  # (3)
    _patch_schedules()  # (4)
    _patch_cuda_rng_state()  # (6)
    _APPLIED = True
    return True


def quiet_cpu_warnings() -> None:
    """(7): drop megatron-core's CUDA_DEVICE_MAX_CONNECTIONS advice (that message, from that
    module only). Idempotent: warnings.filterwarnings replaces an identical filter."""
    warnings.filterwarnings(
        "ignore",
        message=".*CUDA_DEVICE_MAX_CONNECTIONS",
        category=UserWarning,
        module=r"megatron\.core\.tensor_parallel\.layers",
    )


@functools.lru_cache(maxsize=32)
def _cpu_causal_mask(sq: int) -> torch.Tensor:
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def _patch_causal_mask() -> None:
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils

    utils.get_default_causal_mask = _cpu_causal_mask
    fused_softmax.get_default_causal_mask = _cpu_causal_mask


class _CpuDeviceTorch(types.ModuleType):
    """``torch`` as seen by the pipeline schedules: tensors asked for on "cuda" land on the CPU."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, device=None, **kwargs):
        if device is not None and str(device).startswith("cuda"):
            device = "cpu"
        return torch.zeros(*args, device=device, **kwargs)


def _patch_schedules() -> None:
    from megatron.core.pipeline_parallel import schedules

    schedules.torch = _CpuDeviceTorch()


def _patch_cuda_rng_state() -> None:
    from megatron.core.tensor_parallel import random as mp_random

    mp_random._get_cuda_rng_state = lambda *args, **kwargs: torch.empty(0, dtype=torch.uint8)
    mp_random._set_cuda_rng_state = lambda *args, **kwargs: None


def seed_model_parallel_rng(seed: int) -> None:
    """Seed megatron's model-parallel RNG tracker: CUDA generators on GPU, CPU ones otherwise.

    The offsets mirror ``model_parallel_cuda_manual_seed`` so that a CPU run and a GPU run use the
    same seeding scheme.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as mp_random

    if cuda_available():
        mp_random.model_parallel_cuda_manual_seed(seed)
        return
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tracker = CpuRNGStatesTracker()
    tracker.add(mp_random._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mp_random._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + tp_rank)
    tracker.add(mp_random._EXPERT_PARALLEL_RNG_TRACKER_NAME, seed + 1024 + 100 * tp_rank)
    mp_random._CUDA_RNG_STATE_TRACKER = tracker
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def _tracker_base():
    from megatron.core.tensor_parallel.random import CudaRNGStatesTracker

    return CudaRNGStatesTracker


class CpuRNGStatesTracker(_tracker_base()):
    """megatron's RNG tracker with CPU generator states in place of CUDA ones."""

    def add(self, name, seed):
        if seed in self.seeds_:
            raise ValueError(f"RNG seed {seed} already tracked")
        if name in self.states_:
            raise ValueError(f"RNG state {name} already tracked")
        self._is_initialized = True
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            raise KeyError(f"RNG state {name} is not tracked")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)

"""Every sampler option in one dataclass, each with its one default (docs/design.md §6).

`mdm generate`, `mdm eval gsm8k|genppl`, the lm-eval model and the benchmarks all build a
`SamplingConfig` and hand it to `inference.generate.generate`; their command lines map flags onto
its fields and nothing else. A command that needs other defaults (GSM8K answers need 256 tokens)
passes `SamplingConfig(gen_length=256, ...)` as the defaults of its flags; the field list and its
checks stay here.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal

from megatron_mdm.utils import MDMError

SamplerName = Literal["llada", "mdlm", "fast", "arm", "block"]
CacheMode = Literal["none", "prefix", "dual"]
Remasking = Literal["low_confidence", "random"]

SAMPLERS: tuple[str, ...] = typing.get_args(SamplerName)
DIFFUSION_SAMPLERS: tuple[str, ...] = tuple(s for s in SAMPLERS if s not in ("arm", "block"))
# the one sampler of each objective that has a single one
_ONLY_SAMPLER = {"arm": "arm", "block": "block"}
_KIND = {"arm": "an ARM checkpoint", "block": "a block diffusion model"}
CACHE_MODES: tuple[str, ...] = typing.get_args(CacheMode)
REMASKING: tuple[str, ...] = typing.get_args(Remasking)


class SamplingError(MDMError):
    """Sampler settings that do not fit together or do not fit the model: one line."""


@dataclass(frozen=True)
class SamplingConfig:
    sampler: SamplerName | None = None
    """llada | mdlm | fast (masked diffusion), arm (left to right) or block (block diffusion:
    blocks left to right with an exact KV cache); None: the objective's own (arm, block,
    else llada)."""
    gen_length: int = 64
    """Tokens generated after the prompt (an upper bound for arm, which stops at EOS)."""
    steps: int = 64
    """Denoising steps over the whole generation (llada/fast/mdlm); split evenly over blocks
    (block: steps * block_size / gen_length per block of block_size tokens)."""
    block_length: int | None = None
    """Semi-autoregressive block size (llada/fast); None: one block of gen_length. block: the
    model's block size (None, or the same number)."""
    temperature: float = 0.0
    """Gumbel-max temperature (float64 noise); 0 is greedy."""
    remasking: Remasking = "low_confidence"
    """Which masked positions a step reveals: the most confident, or random ones."""
    cfg: float = 0.0
    """Classifier-free guidance weight w (SMDM's unsupervised form); 0 disables it."""
    cache: CacheMode = "dual"
    """fast: approximate KV cache per block (prefix | dual | none); arm and block: none = no
    KV cache (the whole prefix every step), otherwise the exact cache."""
    threshold: float | None = 0.9
    """fast and block: also reveal every masked token of the block above this confidence;
    None: the fixed schedule only."""
    seed: int = 0
    """Seed of the sampling generator (Gumbel noise, random remasking, MDLM draws)."""
    stop_at_eos: bool = True
    """arm and block: stop once every row has produced EOS (block: at the end of a block);
    False: exactly gen_length tokens (benchmarks that compare samplers at equal length)."""

    @property
    def blocks(self) -> int:
        """The block length in effect (gen_length when unset)."""
        return self.block_length or self.gen_length

    def replace(self, **changes) -> SamplingConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> SamplingConfig:
        """Raise SamplingError naming the first option at fault; return self."""
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise SamplingError(
                f"sampler must be one of {', '.join(SAMPLERS)}, not {self.sampler!r}"
            )
        for name in ("gen_length", "steps"):
            if getattr(self, name) < 1:
                raise SamplingError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.block_length is not None and self.block_length < 1:
            raise SamplingError(f"block_length must be >= 1, not {self.block_length}")
        if not self.temperature >= 0:
            raise SamplingError(f"temperature must be >= 0, not {self.temperature}")
        if self.remasking not in REMASKING:
            raise SamplingError(
                f"remasking must be one of {', '.join(REMASKING)}, not {self.remasking!r}"
            )
        if self.cache not in CACHE_MODES:
            raise SamplingError(
                f"cache must be one of {', '.join(CACHE_MODES)}, not {self.cache!r}"
            )
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise SamplingError(f"threshold must be in [0, 1] or None, not {self.threshold}")
        return self


def pick_sampler(requested: str | None, objective: str) -> str:
    """The sampler to run for a model trained with `objective`; SamplingError for one of the
    wrong kind (arm and block models have one sampler each; masked diffusion models the rest)."""
    own = _ONLY_SAMPLER.get(objective)
    if requested is None:
        return own or "llada"
    if own is not None and requested != own:
        raise SamplingError(
            f"--sampler {requested} needs a masked diffusion model; this is {_KIND[objective]} "
            f"(use --sampler {own})"
        )
    if own is None and requested in _KIND:
        raise SamplingError(
            f"--sampler {requested} needs {_KIND[requested]}; this is a masked diffusion model "
            f"(use one of {', '.join(DIFFUSION_SAMPLERS)})"
        )
    return requested

"""EleutherAI lm-evaluation-harness model `mdm`: our checkpoints (MDM or ARM) under lm-eval tasks.

    mdm-lm-eval --model mdm --model_args ckpt=runs/quickstart,mc_num=128 --tasks hellaswag
    python -m megatron_mdm.eval.lm_eval_model --model mdm --model_args hf=export/ ...

lm-eval 0.4.13 discovers models only through its own registry (no plugin entry points), so the
two commands above are lm-eval's own command line with `mdm` registered first; in Python,
`import megatron_mdm.eval.lm_eval_model` then `lm_eval.simple_evaluate(model="mdm", ...)`. Local
tasks: lm-eval's `--include_path DIR` (YAML task files).

Model arguments (`--model_args k=v,...`):
- `ckpt=PATH` or `hf=PATH`: training checkpoint / output_dir, or an `hf` export (mdm, arm or
  block diffusion; a block model scores the block ELBO and samples with `--sampler block`).
- `estimator=mc|chain_rule|bernoulli`, `mc_num=128`, `mc_batch_size=32`, `cfg=0.0`, `seed=0`:
  `loglikelihood` through `eval.likelihood` (an MDM's score is an ELBO estimate, a lower bound on
  log p; with `cfg` > 0 a guided score that ranks choices, not a likelihood). lm-eval's own
  `--batch_size` sets only `generate_until`'s batch: scoring takes one request at a time, `mc_num / mc_batch_size`
  forward passes of `mc_batch_size` masked copies each.
- `greedy_check=false`: `is_greedy` (used by e.g. LAMBADA's accuracy) needs one extra greedy
  decoding per request for an MDM; off by default (then reported False). ARMs: always exact.
- `max_length` (default: trained sequence length): longer contexts are cut on the left.
- `sampler`, `gen_length`, `steps`, `block_length`, `temperature`, `remasking`, `cache`,
  `threshold` (the fields of `inference.SamplingConfig`, with its defaults): for `generate_until`
  (`mdm generate`'s sampler; the task's `until` strings cut the text, its `max_gen_toks` is not
  used: `gen_length` decides; a task `temperature` overrides ours).
- `gen_batch_size` (default: lm-eval's `--batch_size` when it is a number, else 8): prompts per
  `generate_until` batch (batched generation is batch-invariant: the texts do not change).

`loglikelihood_rolling` returns the ELBO of the whole text (windows of `max_length`, as
`mdm eval ppl`): for an MDM a lower bound on the log-likelihood, so word/byte perplexities that
lm-eval derives from it are upper bounds. Every estimate is seeded by (seed, text), so results
do not depend on request order.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

try:
    from lm_eval.api.model import LM
except ImportError as exc:  # an optional extra
    raise ImportError(
        f"{exc}: the lm-eval model needs lm_eval (pip install 'megatron-mdm[eval]')"
    ) from exc

from megatron_mdm.eval.likelihood import (
    arm_log_likelihood,
    block_greedy_matches,
    encode_pair,
    estimate_log_likelihood,
    mdm_greedy_matches,
)
from megatron_mdm.eval.ppl import perplexity_bound
from megatron_mdm.inference.batching import complete_many
from megatron_mdm.inference.loading import load_model, trained_seq_length
from megatron_mdm.inference.sampling_config import SamplingConfig
from megatron_mdm.parallel.distributed import prepare_accelerator
from megatron_mdm.utils import QUIET_IMPORT_WARNINGS, stable_seed

# lm-eval passes --model_args as strings (or numbers it recognised): each sampling field's type.
_SAMPLING_TYPES = {
    "sampler": str,
    "gen_length": int,
    "steps": int,
    "block_length": int,
    "temperature": float,
    "remasking": str,
    "cache": str,
    "threshold": float,
}


def sampling_config(cfg: float, seed: int, **given) -> SamplingConfig:
    """The SamplingConfig of `generate_until` from lm-eval model arguments; unset fields keep
    SamplingConfig's defaults, "none" means None."""
    unknown = sorted(set(given) - set(_SAMPLING_TYPES))
    if unknown:
        raise TypeError(f"unknown model argument {unknown[0]!r} for the mdm model")
    values = {
        key: None if value is None or str(value).lower() == "none" else _SAMPLING_TYPES[key](value)
        for key, value in given.items()
    }
    return SamplingConfig(cfg=float(cfg), seed=int(seed), **values).validate()


def generate_batch_size(gen_batch_size, batch_size) -> int:
    """Prompts per `generate_until` batch: `gen_batch_size`, else lm-eval's `--batch_size` when
    it is a number, else 8."""
    for value in (gen_batch_size, batch_size):
        if value is not None and str(value).isdigit() and int(value) >= 1:
            return int(value)
    if gen_batch_size is not None:
        raise TypeError(f"gen_batch_size must be a positive integer, not {gen_batch_size!r}")
    return 8


def cut_at_stops(text: str, until: list[str]) -> str:
    """`text` up to the first of the task's stop strings, in their order (lm-eval's rule)."""
    for stop in until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


class MDMEvalModel(LM):
    def __init__(
        self,
        ckpt: str | None = None,
        hf: str | None = None,
        estimator: str = "mc",
        mc_num: int = 128,
        mc_batch_size: int = 32,
        cfg: float = 0.0,
        seed: int = 0,
        greedy_check: bool = False,
        max_length: int | None = None,
        gen_batch_size: int | None = None,
        batch_size=None,  # lm-eval's; see the module docstring
        max_batch_size=None,
        device=None,
        **sampling,
    ):
        super().__init__()
        prepare_accelerator()  # before anything imports deepspeed (it fixes its device at import)
        self.model = load_model(
            None if ckpt is None else str(ckpt), None if hf is None else str(hf)
        )
        self.max_length = int(max_length or trained_seq_length(self.model, ckpt, hf))
        self.estimator = str(estimator)
        self.mc_num = int(mc_num)
        self.mc_batch_size = int(mc_batch_size)
        self.cfg = float(cfg)
        self.seed = int(seed)
        self.greedy_check = bool(greedy_check)
        self.options = sampling_config(cfg, seed, **sampling)
        self.generate_batch_size = generate_batch_size(gen_batch_size, batch_size)
        self._device = self.model.device

    # -- scoring --------------------------------------------------------------------------------

    def score(self, context: str, continuation: str) -> tuple[float, bool]:
        """(log-likelihood estimate, is_greedy) of one request; also used by tests directly."""
        m = self.model
        prompt_ids, answer_ids = encode_pair(m.tokenizer, context, continuation)
        keep = max(self.max_length - len(answer_ids), 0)
        prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep else []
        est = estimate_log_likelihood(
            m.model_fn,
            prompt_ids,
            answer_ids,
            mask_id=m.mask_id,
            objective=m.objective,
            estimator=self.estimator,
            mc_num=self.mc_num,
            batch_size=self.mc_batch_size,
            cfg=self.cfg,
            seed=self.seed,
            bos_id=m.eos_id,
            device=m.device,
            block_fn=m.block_fn,
            block_size=m.block_size,
        )
        return est.log_likelihood, self._is_greedy(prompt_ids, answer_ids)

    def _is_greedy(self, prompt_ids: list[int], answer_ids: list[int]) -> bool:
        import torch

        if not answer_ids:
            return True
        m = self.model
        prompt = torch.tensor(prompt_ids, dtype=torch.long, device=m.device)
        answer = torch.tensor(answer_ids, dtype=torch.long, device=m.device)
        if m.objective == "arm":
            return arm_log_likelihood(m.model_fn, prompt, answer, m.eos_id)[1]
        if not self.greedy_check:
            return False
        if m.objective == "block":
            return block_greedy_matches(
                m.model_fn, prompt, answer, m.mask_id, m.block_size, self.cfg
            )
        return mdm_greedy_matches(m.model_fn, prompt, answer, m.mask_id, self.cfg)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = []
        for request in tqdm(requests, desc="loglikelihood", disable=disable_tqdm):
            context, continuation = request.args
            result = self.score(context, continuation)
            results.append(result)
            self.cache_hook.add_partial("loglikelihood", (context, continuation), result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        import numpy as np

        m = self.model
        results = []
        for request in tqdm(requests, desc="loglikelihood_rolling", disable=disable_tqdm):
            (text,) = request.args
            ids = np.asarray(m.tokenizer.encode(text), dtype=np.int64)
            if ids.size == 0:
                results.append(0.0)
                continue
            out = perplexity_bound(
                m,
                ids,
                self.max_length,
                mc_num=self.mc_num,
                batch_size=self.mc_batch_size,
                estimator="bernoulli" if self.estimator == "bernoulli" else "mc",
                seed=stable_seed(self.seed, "rolling", text),
                progress=False,
            )
            results.append(-out.nll_per_token * out.tokens)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), results[-1])
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests sharing sampler options are generated together, `batch_size` at a time
        (`inference.batching`: each with its own seed, batch-invariant, so batching changes no
        text)."""
        jobs = []  # (options, context, until, seed) per request
        for request in requests:
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            options = self.options
            if "temperature" in gen_kwargs:
                options = options.replace(temperature=float(gen_kwargs["temperature"]))
            if gen_kwargs.get("do_sample") is False:
                options = options.replace(temperature=0.0)
            jobs.append((options, context, until, stable_seed(self.seed, "generate", context)))
        groups: dict[SamplingConfig, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job[0], []).append(i)
        texts: list[str] = [""] * len(jobs)
        bar = tqdm(total=len(jobs), desc="generate_until", disable=disable_tqdm)
        for options, members in groups.items():
            for first in range(0, len(members), self.generate_batch_size):
                part = members[first : first + self.generate_batch_size]
                done = complete_many(
                    self.model,
                    [jobs[i][1] for i in part],
                    options,
                    self.generate_batch_size,
                    [jobs[i][3] for i in part],
                )
                for i, text in zip(part, done):
                    texts[i] = cut_at_stops(text, jobs[i][2])
                bar.update(len(part))
        bar.close()
        for request, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", tuple(request.args), text)
        return texts

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.model.tokenizer, "name", "mdm")


def register() -> None:
    """Register `mdm` in lm-eval's model registry (idempotent). lm-eval fills its registry with
    the built-in models only when it is empty, so those are loaded first."""
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry, register_model

    if "mdm" not in model_registry:
        register_model("mdm")(MDMEvalModel)


register()


def main() -> None:
    """`mdm-lm-eval ...` / `python -m megatron_mdm.eval.lm_eval_model ...`: lm-eval's command line
    with `mdm` registered. Quiet megatron-core's import warnings, as `mdm` does."""
    import warnings

    warnings.filterwarnings("ignore", message=QUIET_IMPORT_WARNINGS)
    prepare_accelerator()
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    sys.exit(main())

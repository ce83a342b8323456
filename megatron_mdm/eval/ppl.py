"""`mdm eval ppl`: perplexity (an upper bound, for an MDM) on held-out text (DESIGN.md §7).

The text is one token stream, documents separated by EOS exactly as training sees them (an
indexed `.bin/.idx` prefix as written by `mdm preprocess`, or a text / jsonl file tokenised here
the same way, one document per line). The stream is cut into consecutive windows of
`seq_length` tokens, each scored on its own:
- MDM: the ELBO of the window (no context), estimated with `mc_num` masked copies (the
  `likelihood` estimators with an empty prompt). -ELBO / tokens bounds the per-token NLL from
  above, so exp of it bounds the perplexity from above (up to Monte Carlo error, reported).
- Block diffusion: the window's block ELBO (sum over its blocks, docs/design.md §11), estimated
  the same ways through the training layout.
- ARM: the exact next-token NLL; window k is fed [last token of window k-1 (EOS for the first)]
  + window[:-1], so every token is scored exactly once, with the same window context as the MDM.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from megatron_mdm.data.readers import PreprocessError, iter_documents
from megatron_mdm.eval.errors import EvalError
from megatron_mdm.eval.likelihood import (
    arm_log_likelihood,
    bernoulli_samples,
    block_elbo_samples,
    mc_samples,
    summarize_samples,
)
from megatron_mdm.utils import keyed_generator


@dataclass
class PerplexityResult:
    nll_per_token: float  # MDM: upper bound (estimate); ARM: exact
    perplexity: float
    stderr_nll_per_token: float  # Monte Carlo standard error of nll_per_token (0 for ARM)
    tokens: int
    windows: int
    bound: bool  # True for an MDM (ELBO), False for an ARM (exact)
    estimator: str
    mc_num: int

    def as_dict(self) -> dict:
        return asdict(self)


def read_token_stream(data: str, tokenizer, max_tokens: int | None = None) -> np.ndarray:
    """int64 token ids of `data`: an indexed-dataset prefix (PREFIX.bin + PREFIX.idx) or a text /
    jsonl file (one document per line / record, EOS after each, as `mdm preprocess`)."""
    limit = max_tokens if max_tokens is not None else math.inf
    parts: list[np.ndarray] = []
    count = 0
    if Path(data + ".bin").is_file() and Path(data + ".idx").is_file():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from megatron.core.datasets.indexed_dataset import IndexedDataset

        dataset = IndexedDataset(data)
        for i in range(len(dataset)):
            if count >= limit:
                break
            parts.append(np.asarray(dataset[i], dtype=np.int64))
            count += len(parts[-1])
    elif Path(data).is_file():
        try:
            for text in iter_documents(data):
                if count >= limit:
                    break
                parts.append(np.asarray([*tokenizer.encode(text), tokenizer.eos_id], np.int64))
                count += len(parts[-1])
        except PreprocessError as exc:
            raise EvalError(str(exc)) from None
    else:
        raise EvalError(f"--data {data}: neither PREFIX.bin/.idx nor a text file")
    tokens = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    if tokens.size == 0:
        raise EvalError(f"--data {data}: no tokens")
    if tokens.min() < 0 or tokens.max() >= tokenizer.vocab_size:
        raise EvalError(
            f"--data {data}: token id {int(tokens.max())} outside the model's tokenizer "
            f"vocabulary [0, {tokenizer.vocab_size}) (preprocessed with another tokenizer?)"
        )
    return tokens


def perplexity_bound(
    model,
    tokens: np.ndarray,
    seq_length: int,
    *,
    mc_num: int = 128,
    batch_size: int = 32,
    estimator: str = "mc",
    seed: int = 0,
    progress: bool = True,
) -> PerplexityResult:
    """Per-token NLL (bound) and perplexity of `tokens` under `model` (an InferenceModel)."""
    from tqdm import tqdm

    if seq_length < 1:
        raise EvalError(f"--seq-length {seq_length}: must be >= 1")
    if estimator not in ("mc", "bernoulli"):
        raise EvalError(f"--estimator {estimator}: ppl uses mc or bernoulli")
    stream = torch.as_tensor(tokens, dtype=torch.long)
    starts = range(0, len(stream), seq_length)
    arm = model.objective == "arm"
    total_logp, total_var = 0.0, 0.0
    empty = torch.zeros(0, dtype=torch.long, device=model.device)
    draw = mc_samples if estimator == "mc" else bernoulli_samples
    bar = tqdm(starts, desc="ppl", unit="window", disable=not progress)
    for k, start in enumerate(bar):
        window = stream[start : start + seq_length].to(model.device)
        if arm:
            context = stream[start - 1 : start] if start else torch.tensor([model.eos_id])
            logp, _ = arm_log_likelihood(model.model_fn, context.to(model.device), window, 0)
        else:
            generator = keyed_generator(seed, "ppl", k)
            try:
                if model.objective == "block":
                    samples = block_elbo_samples(
                        model.block_fn,
                        empty,
                        window,
                        model.mask_id,
                        model.block_size,
                        estimator,
                        mc_num,
                        batch_size,
                        0.0,
                        generator,
                    )
                else:
                    samples = draw(
                        model.model_fn,
                        empty,
                        window,
                        model.mask_id,
                        mc_num,
                        batch_size,
                        0.0,
                        generator,
                    )
            except ValueError as exc:
                raise EvalError(str(exc)) from None
            est = summarize_samples(samples, batch_size, estimator)
            logp = est.log_likelihood
            total_var += est.stderr**2
        total_logp += logp
        done = min(start + seq_length, len(stream))
        bar.set_postfix(nll=f"{-total_logp / done:.4f}")
    n = len(stream)
    nll = -total_logp / n
    return PerplexityResult(
        nll_per_token=nll,
        perplexity=math.exp(nll),
        stderr_nll_per_token=math.sqrt(total_var) / n,
        tokens=n,
        windows=len(starts),
        bound=not arm,
        estimator="exact" if arm else estimator,
        mc_num=0 if arm else mc_num,
    )

"""`mdm eval ppl`: perplexity (an upper bound, for an MDM) on held-out text (docs/design.md §7).

The text is one token stream, documents separated by EOS exactly as training sees them (an
indexed `.bin/.idx` prefix as written by `mdm preprocess`, or a text / jsonl file tokenised here
the same way, one document per line; or, with `--split valid|test`, the documents the run itself
held out: its datasets cut at megatron-core's split boundaries, in order, blend order across
datasets). The stream is cut into consecutive windows of
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

from megatron_mdm.checkpointing.run_dir import find_checkpoint, read_meta
from megatron_mdm.config import from_dict
from megatron_mdm.data.indexed_check import check_indexed_dataset
from megatron_mdm.data.prepare import resolve_blend
from megatron_mdm.data.pretrain_dataset import check_datasets, split_sequences
from megatron_mdm.data.readers import PreprocessError, iter_documents
from megatron_mdm.data.tokenizer_sidecar import check_sidecar
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
        check_sidecar(data, tokenizer, "the model's tokenizer")
        summary = check_indexed_dataset(data, tokenizer.vocab_size)
        parts = _read_sequences(data, 0, summary.sequences, limit)
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


def _read_sequences(prefix: str, first: int, end: int, limit: float) -> list[np.ndarray]:
    """Sequences [first, end) of an indexed dataset (checked first), up to `limit` tokens."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix)
    parts, count = [], 0
    for i in range(first, end):
        if count >= limit:
            break
        parts.append(np.asarray(dataset[i], dtype=np.int64))
        count += len(parts[-1])
    return parts


def run_split_datasets(ckpt: str, tokenizer) -> tuple:
    """(config, dataset summaries) of the run that wrote checkpoint `ckpt`: its `data.blend`,
    or the dataset it preprocessed into its own `data/` folder; each checked (sidecar, files)."""
    ckpt_dir = find_checkpoint(ckpt)
    cfg = from_dict(read_meta(ckpt_dir)["config"], source=str(ckpt_dir / "meta.yaml"))
    run_data = ckpt_dir.parent.parent / "data"  # <output_dir>/checkpoints/<tag>
    data_dir = run_data if run_data.is_dir() else None
    blend = resolve_blend(cfg, tokenizer, is_builder=False, data_dir=data_dir)
    return cfg, check_datasets(cfg, tokenizer, blend)


def read_split_stream(
    ckpt: str, split: str, tokenizer, max_tokens: int | None = None
) -> tuple[np.ndarray, dict]:
    """Token stream of the documents the run of `ckpt` put in `split` (valid or test), with a
    description of where they came from (`data`, `split`, `documents`)."""
    cfg, summaries = run_split_datasets(ckpt, tokenizer)
    limit = max_tokens if max_tokens is not None else math.inf
    parts: list[np.ndarray] = []
    ranges = split_sequences(cfg, summaries, split)
    for prefix, first, end in ranges:
        parts += _read_sequences(prefix, first, end, limit - sum(map(len, parts)))
    documents = sum(end - first for _, first, end in ranges)
    where = ", ".join(f"{p}[{first}:{end}]" for p, first, end in ranges)
    if documents == 0:
        raise EvalError(
            f"--split {split}: the run's {split} split is empty ({where}; "
            f"data.split={cfg.data.split!r} in {cfg.source})"
        )
    tokens = np.concatenate(parts)[: max_tokens if max_tokens is not None else None]
    return tokens, {"data": where, "split": split, "documents": documents}


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

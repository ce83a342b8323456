"""`mdm sft CONFIG`: supervised fine-tuning (docs/design.md §4) on the pretraining Trainer.

The examples are read, split and fitted to the sequence length once, identically on every rank
and before any process group exists, so a bad file or key stops the run with one line. The run
length follows from ``sft.epochs`` when it is set (``ceil(epochs * N_train / global batch)``
steps, replacing ``train.max_steps``), so the LR schedule spans exactly the epochs asked for.
The Trainer then runs unchanged with :class:`~megatron_mdm.data.sft_batches.SFTBatches` as its
batch source: weights from ``train.init_from`` (a training checkpoint or an exported
hf/llada/smdm folder, any TP/PP), any TP/PP/ZeRO layout, resume, preemption, checkpoints,
metrics; the logged ``loss`` is the SFT loss and ``val_loss`` the validation response loss.
``model.objective: arm`` gives next-token SFT on the response tokens (ARM baselines).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_mdm.checkpointing.causal_import import resolve_init_from
from megatron_mdm.checkpointing.run_dir import CheckpointError
from megatron_mdm.config import ConfigError, ExperimentConfig, validate
from megatron_mdm.data.sft import (
    ChatTemplate,
    SFTDataError,
    SFTExample,
    TruncationReport,
    fit_examples,
    iter_sft_groups,
)
from megatron_mdm.data.sft_batches import SFTBatches
from megatron_mdm.data.tokenizers import build_tokenizer
from megatron_mdm.model.spec import check_transformer_impl
from megatron_mdm.training.loop import Trainer, training_session
from megatron_mdm.training.preemption import PreemptionWatcher
from megatron_mdm.utils import keyed_generator

__all__ = ["SFTData", "load_sft_data", "run_sft", "sft_run_length"]


@dataclass
class SFTData:
    train: list[SFTExample]
    valid: list[SFTExample]
    reports: dict[str, TruncationReport] = field(default_factory=dict)

    def summary(self) -> list[str]:
        return [
            report.summary().replace("SFT", f"SFT {name}", 1)
            for name, report in self.reports.items()
        ]


def _fail(cfg: ExperimentConfig, key: str | None, message: str) -> ConfigError:
    return ConfigError(message, source=cfg.source, key=key)


def check_sft_inputs(cfg: ExperimentConfig) -> None:
    """What `mdm sft` needs beyond a valid config: data files that exist, an init source."""
    s = cfg.sft
    if cfg.model.objective == "block":
        raise _fail(
            cfg, "model.objective", "mdm sft does not train block diffusion yet (mdm or arm)"
        )
    if cfg.diffusion.attention_anneal_steps:
        raise _fail(
            cfg,
            "diffusion.attention_anneal_steps",
            "mdm sft does not anneal attention (an adaptation step of pretraining, "
            "docs/design.md §13.5): set it to 0",
        )
    if not s.data_files:
        raise _fail(cfg, "sft.data", "required by mdm sft (a file or a list of files)")
    for key, files in (("sft.data", s.data_files), ("sft.valid_data", s.valid_files)):
        for path in files:
            if not Path(path).is_file():
                raise _fail(cfg, key, f"{path}: no such file")
    if cfg.train.init_from and not Path(cfg.train.init_from).exists():
        raise _fail(cfg, "train.init_from", f"{cfg.train.init_from}: no such file or folder")


def _hold_out(groups: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, valid) groups: a keyed random ``fraction`` of the lines (at least one) is held
    out, both samples of a split GSM8K problem together; each side keeps the file order."""
    n = len(groups)
    k = max(1, round(fraction * n))
    if k >= n:
        raise ValueError(f"sft.valid_fraction {fraction} of {n} examples leaves none to train on")
    gen = keyed_generator(seed, "sft-valid")
    held = set(torch.randperm(n, generator=gen)[:k].tolist())
    train = [g for i, g in enumerate(groups) if i not in held]
    valid = [g for i, g in enumerate(groups) if i in held]
    return train, valid


def load_sft_data(cfg: ExperimentConfig, tokenizer) -> SFTData:
    """Read ``sft.data`` (its first ``sft.limit`` lines) and ``sft.valid_data``, hold out
    ``sft.valid_fraction`` of the lines, fit both sets to ``model.seq_length`` with
    ``sft.truncation``. Raises SFTDataError naming file and line."""
    s = cfg.sft
    template = ChatTemplate(**dataclasses.asdict(s.chat_template))

    def groups(files: list[str], limit: int | None) -> list:
        found = (
            group
            for path in files
            for group in iter_sft_groups(path, tokenizer, template, s.format, s.gsm8k_split_cot)
        )
        return list(itertools.islice(found, limit))  # stops reading at the limit

    train_groups = groups(s.data_files, s.limit)
    valid_groups = groups(s.valid_files, None)
    if s.valid_fraction > 0:
        train_groups, valid_groups = _hold_out(train_groups, s.valid_fraction, cfg.train.seed)
    data = SFTData([], [])
    for name, found in (("train", train_groups), ("valid", valid_groups)):
        if not found:
            continue
        examples = [ex for group in found for ex in group]
        kept, report = fit_examples(examples, cfg.model.seq_length, s.truncation)
        setattr(data, name, kept)
        data.reports[name] = report
    return data


def sft_run_length(cfg: ExperimentConfig, num_train: int) -> ExperimentConfig:
    """``cfg`` with ``train.max_steps = ceil(sft.epochs * num_train / global_batch_size)`` when
    ``sft.epochs`` is set (unchanged otherwise), validated again (e.g. warmup vs the new
    length)."""
    if cfg.sft.epochs is None:
        return cfg
    steps = max(1, math.ceil(cfg.sft.epochs * num_train / cfg.train.global_batch_size))
    train = dataclasses.replace(cfg.train, max_steps=steps)
    out = dataclasses.replace(cfg, train=train)
    out.source = f"{cfg.source} (train.max_steps = {steps} from sft.epochs)"
    validate(out)
    return out


def run_sft(cfg: ExperimentConfig, stop: PreemptionWatcher) -> None:
    """`mdm sft`; ``stop``: the command's armed signal watcher."""
    cfg = resolve_init_from(cfg)  # a hub id or causal LM folder (checkpointing/causal_import.py)
    check_sft_inputs(cfg)
    check_transformer_impl(cfg)
    tokenizer = build_tokenizer(cfg.data.tokenizer.type, cfg.data.tokenizer.model)
    try:
        data = load_sft_data(cfg, tokenizer)
    except SFTDataError as exc:
        raise _fail(
            cfg, "sft.data" if exc.path in cfg.sft.data_files else "sft.valid_data", str(exc)
        ) from None
    except ValueError as exc:  # e.g. a chat template the tokenizer does not have
        raise _fail(cfg, "sft", str(exc).splitlines()[0]) from None
    if not data.train:
        raise _fail(
            cfg, "sft.truncation", "; ".join(data.summary()) + ": no example left to train on"
        )
    cfg = sft_run_length(cfg, len(data.train))

    def sft_batches(cfg, ctx, tokenizer, vocab) -> SFTBatches:
        return SFTBatches(
            cfg, data.train, data.valid, tokenizer.eos_id, vocab.mask_id, ctx.dp_rank, ctx.dp_size
        )

    with training_session(cfg, stop) as ctx:
        try:
            trainer = Trainer(cfg, ctx, batch_source=sft_batches, stop=stop)
        except CheckpointError as exc:
            raise _fail(cfg, None, str(exc).splitlines()[0]) from None
        for line in data.summary():
            trainer._say(line)
        t = cfg.train
        epochs = t.max_steps * t.global_batch_size / len(data.train)
        trainer._say(
            f"SFT ({cfg.model.objective}, normalize={cfg.sft.normalize}): {len(data.train)} "
            f"training examples, {len(data.valid)} validation; {t.max_steps} steps of "
            f"{t.global_batch_size} = {epochs:.2f} epochs"
        )
        if not cfg.train.init_from and trainer.step == 0:
            trainer._say("no train.init_from: fine-tuning a randomly initialised model")
        if t.eval_interval > 0 and not data.valid:
            trainer._say("train.eval_interval is set but there is no validation data: skipped")
        trainer.train()

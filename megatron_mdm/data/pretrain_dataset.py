"""Pretraining samples from megatron-core indexed datasets: GPTDataset packing, splits, blends.

Every dataset of the blend is checked first (docs/design.md §12): its tokenizer sidecar against
the run's tokenizer, then its files (`indexed_check`, `data.validate`), so damaged or foreign
data fails in one line naming the file before megatron-core reads it.

`BlendedMegatronDatasetBuilder` builds the train/valid/test GPTDatasets (document shuffling,
packing to `seq_length + 1` tokens, epochs, weighted blends) and caches their index files; rank 0
builds first and the others load the cache. A sample is a pure function of (seed, index), which
is what makes batches identical on any number of ranks and after a resume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_mdm.config import ConfigError, ExperimentConfig
from megatron_mdm.data.indexed_check import IndexSummary, check_indexed_dataset
from megatron_mdm.data.tokenizer_sidecar import check_sidecar

SPLITS = ("train", "valid", "test")
# megatron-core warns whenever a blend holds one dataset, which every single-prefix run does
# (explicit weights keep its sampling path, hence its samples, the same for any blend size).
_SINGLE_BLEND_NOTICE = "Building a BlendedDataset for a single MegatronDataset"


class _DropMessage(logging.Filter):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.message


def _quiet_single_blend_notice() -> None:
    logger = logging.getLogger("megatron.core.datasets.blended_dataset")
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(_SINGLE_BLEND_NOTICE))


class DatasetTokenizer:
    """The tokenizer fields GPTDataset reads: `eod`, `pad`, `vocab_size`, and the
    `unique_identifiers` that go into the hash naming its index cache."""

    def __init__(self, tokenizer):
        self.unique_identifiers = {
            "class": type(tokenizer).__name__,
            "name": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
        }
        self.eod = tokenizer.eos_id
        self.eos = tokenizer.eos_id
        pad = getattr(tokenizer, "pad_id", None)
        self.pad = -1 if pad is None or pad == tokenizer.eos_id else pad
        self.vocab_size = tokenizer.vocab_size


@dataclass
class SampleSource:
    """Index -> `seq_length + 1` token ids (inputs plus the one extra token the ARM shifts in)."""

    dataset: object  # GPTDataset or BlendedDataset

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, index: int) -> np.ndarray:
        item = self.dataset[index]
        tokens, labels = item["tokens"], item["labels"]
        return np.concatenate([tokens.numpy(), labels[-1:].numpy()]).astype(np.int64)


def split_sample_counts(cfg: ExperimentConfig) -> list[int]:
    """Samples the run reads per split; 0 = never read (test always: training never reads it,
    valid unless train.eval_interval > 0)."""
    t = cfg.train
    train = t.max_steps * t.global_batch_size
    valid = t.eval_iters * t.global_batch_size if t.eval_interval > 0 else 0
    return [train, valid, 0]


def blend_prefixes(blend: list) -> list[str]:
    """The dataset prefixes of `data.blend`: `[w1, p1, w2, p2, ...]` or prefixes alone."""
    if all(isinstance(x, str) for x in blend):
        return [str(x) for x in blend]
    return [str(x) for x in (blend[1::2] if len(blend) % 2 == 0 else blend)]


def check_datasets(cfg: ExperimentConfig, tokenizer, blend: list) -> dict[str, IndexSummary]:
    """Existence, tokenizer sidecar, then the files themselves (`data.validate`), per prefix."""
    check_prefixes(cfg, blend)
    summaries = {}
    for prefix in blend_prefixes(blend):
        check_sidecar(prefix, tokenizer)
        summaries[prefix] = check_indexed_dataset(prefix, tokenizer.vocab_size, cfg.data.validate)
    return summaries


def weighted_blend(blend: list, summaries: dict[str, IndexSummary]) -> list:
    """`[w1, p1, ...]` for megatron-core: prefixes given alone weigh by their token counts, so
    documents mix as if the files were one (docs/design.md §12)."""
    if all(isinstance(x, str) for x in blend):
        return [x for p in blend for x in (float(max(summaries[str(p)].tokens, 1)), str(p))]
    return list(blend)


def split_bounds(bounds: tuple[float, float], n: int) -> tuple[int, int]:
    """Megatron-core's cut of `n` sequences at split boundaries `bounds` (fractions)."""
    return int(round(bounds[0] * n)), int(round(bounds[1] * n))


def split_matrix(split: str) -> list:
    """`data.split` as megatron-core's split matrix: (begin, end) fraction or None per split."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    return convert_split_vector_to_split_matrix(parse_and_normalize_split(split))


def split_sequences(
    cfg: ExperimentConfig, summaries: dict[str, IndexSummary], name: str
) -> list[tuple[str, int, int]]:
    """(prefix, first, end) sequences of split `name` in each dataset: the documents a run
    with `cfg` holds out in (or trains on from) that split."""
    bounds = split_matrix(cfg.data.split)[SPLITS.index(name)]
    if bounds is None:
        return [(prefix, 0, 0) for prefix in summaries]
    return [(p, *split_bounds(bounds, s.sequences)) for p, s in summaries.items()]


def check_prefixes(cfg: ExperimentConfig, blend: list) -> None:
    for prefix in blend_prefixes(blend):
        for suffix in (".bin", ".idx"):
            if not Path(prefix + suffix).exists():
                raise ConfigError(
                    f"{prefix}{suffix} does not exist (run `mdm preprocess` first)",
                    source=cfg.source,
                    key="data.blend",
                )


def check_split_sizes(cfg: ExperimentConfig, config, counts: list[int], blend: list) -> None:
    """Fail in one line when a split the run reads holds fewer than `seq_length + 1` tokens.

    megatron-core's GPTDataset adds epochs until the split yields the requested tokens, so a
    split with no document (e.g. the 1/1000 test share of a 400-line file) loops forever.
    Boundaries follow megatron's own: round(weight * number of documents)."""
    from megatron.core.datasets.gpt_dataset import GPTDataset

    need = cfg.model.seq_length + 1
    for prefix in blend_prefixes(blend):
        low = GPTDataset.build_low_level_dataset(prefix, config)
        lengths = np.asarray(low.sequence_lengths)
        n = len(lengths)
        for name, bounds, wanted in zip(SPLITS, config.split_matrix, counts):
            if bounds is None or wanted == 0:
                continue
            beg, end = split_bounds(bounds, n)
            tokens = int(lengths[beg:end].sum())
            if tokens < need:
                source = cfg.data.text_file or f"{prefix}.bin"
                raise ConfigError(
                    f"the {name} split of {source} has {end - beg} of {n} documents, "
                    f"{tokens} tokens: fewer than one sample of model.seq_length + 1 = {need} "
                    f"tokens; give it more text or a larger {name} weight in "
                    f"data.split={cfg.data.split!r}",
                    source=cfg.source,
                    key="data.split",
                )


def build_sample_sources(
    cfg: ExperimentConfig, tokenizer, blend: list, cache_dir: Path
) -> dict[str, SampleSource | None]:
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.utils import get_blend_from_list

    blend = weighted_blend(blend, check_datasets(cfg, tokenizer, blend))
    _quiet_single_blend_notice()
    config = GPTDatasetConfig(
        random_seed=cfg.train.seed,
        sequence_length=cfg.model.seq_length,
        blend=get_blend_from_list([str(x) for x in blend]),
        split=cfg.data.split,
        path_to_cache=str(cache_dir),
        tokenizer=DatasetTokenizer(tokenizer),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        mmap_bin_files=True,
    )
    counts = split_sample_counts(cfg)
    # Splits the run never reads are not built at all (None in the matrix): building one that
    # happens to be empty would hang megatron (see check_split_sizes). The other splits keep
    # their boundaries, so documents stay in the same split whatever the run reads.
    config.split_matrix = [
        bounds if wanted > 0 else None for bounds, wanted in zip(config.split_matrix, counts)
    ]
    check_split_sizes(cfg, config, counts, blend)
    built = BlendedMegatronDatasetBuilder(GPTDataset, counts, lambda: True, config).build()
    sources = {}
    for name, dataset, wanted in zip(SPLITS, built, counts):
        sources[name] = SampleSource(dataset) if dataset is not None and wanted > 0 else None
    if sources["train"] is None:
        raise ConfigError("the train split is empty", source=cfg.source, key="data.split")
    if cfg.train.eval_interval > 0 and sources["valid"] is None:
        raise ConfigError(
            "train.eval_interval > 0 needs a non-empty valid split",
            source=cfg.source,
            key="data.split",
        )
    return sources

"""The indexed datasets a run trains on: `data.blend`, or a corpus preprocessed on the fly.

With no `data.blend`, the run preprocesses `data.text_file` (or the built-in synthetic corpus)
through the same `mdm preprocess` path into `<output_dir>/data/`, once, on rank 0. So a bare
`mdm train configs/quickstart.yaml` needs no set-up and still exercises the real pipeline.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from megatron_mdm.config import ConfigError, ExperimentConfig
from megatron_mdm.data.preprocess import preprocess
from megatron_mdm.data.synthetic_corpus import write_corpus


def _fingerprint(*parts) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=4).hexdigest()


def on_the_fly_prefix(cfg: ExperimentConfig, data_dir: Path) -> tuple[Path, Path]:
    """(dataset prefix, text it is made of) of a run without `data.blend`: `data.text_file` or
    the synthetic corpus, named after the text (path, size, mtime) and the tokenizer."""
    tok = cfg.data.tokenizer
    if cfg.data.text_file:
        text = Path(cfg.data.text_file)
        if not text.is_file():
            raise ConfigError(f"{text} does not exist", source=cfg.source, key="data.text_file")
        stat = text.stat()
        name = f"{text.stem}-{_fingerprint(str(text.resolve()), stat.st_size, stat.st_mtime_ns, tok.type, tok.model)}"
    else:
        kind = cfg.data.synthetic
        text = data_dir / (
            "synthetic_corpus.txt" if kind == "standard" else f"synthetic_{kind}.txt"
        )
        name = f"synthetic-{_fingerprint(tok.type, tok.model)}"
        name = (
            name if kind == "standard" else f"synthetic_{kind}-{_fingerprint(tok.type, tok.model)}"
        )
    return data_dir / name, text


def resolve_blend(
    cfg: ExperimentConfig, tokenizer, is_builder: bool, data_dir: Path | None = None
) -> list:
    """The Megatron-style blend list to train on; builds the on-the-fly dataset if needed
    (into `data_dir`, default `<train.output_dir>/data`)."""
    if cfg.data.blend:
        return list(cfg.data.blend)
    data_dir = Path(cfg.train.output_dir) / "data" if data_dir is None else Path(data_dir)
    prefix, text = on_the_fly_prefix(cfg, data_dir)
    if is_builder and not (Path(f"{prefix}.bin").exists() and Path(f"{prefix}.idx").exists()):
        if not cfg.data.text_file:
            write_corpus(text, lexicon=cfg.data.synthetic)
        preprocess([str(text)], str(prefix), tokenizer, workers=1, progress=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return [1.0, str(prefix)]

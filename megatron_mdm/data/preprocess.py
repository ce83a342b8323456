"""Turn raw text into a megatron-core indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``).

Tokenising once, ahead of training, keeps tokenizers out of the training loop and lets every rank
memory-map the same token stream. Each document is one sequence ending with EOS, so packing can
cut documents anywhere and still see where one ends.

Choices that matter at corpus scale:
- Inputs are read lazily (line by line, parquet batch by batch), so memory stays flat whatever
  the file size; only ``split_documents="none"`` holds one whole file, since it is one document.
- Workers tokenise chunks of documents while the main process reads and writes; ``imap`` keeps
  chunks in input order, so the output is byte-identical for any number of workers.
- Bad input stops the run with one line naming the file and line, and the output appears only
  once complete (temp files, then rename): a half-written dataset is never mistaken for data.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megatron_mdm.config import ConfigError
from megatron_mdm.data.tokenizers import (
    TOKENIZER_TYPES,
    Tokenizer,
    TokenizerSpec,
    build_tokenizer,
    train_sentencepiece,
)

__all__ = [
    "PreprocessError",
    "add_preprocess_arguments",
    "add_tokenizer_train_arguments",
    "iter_documents",
    "preprocess",
    "run_preprocess_args",
    "run_tokenizer_train_args",
]

SPLIT_MODES = ("line", "none")
JSONL_SUFFIXES = (".jsonl", ".json")  # Megatron's tools call JSON-lines files .json
PARQUET_SUFFIXES = (".parquet",)
_HF_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
# A bare `name` or `owner/name` with no file suffix is taken for a `datasets` dataset name.
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FILE_SUFFIXES = (".txt", ".text", ".md", *JSONL_SUFFIXES, *PARQUET_SUFFIXES, ".gz", ".csv")

_CHUNK_DOCS = 256  # documents per worker task: large enough to amortise pickling
_CHUNK_CHARS = 1 << 20  # ... but bounded in size, whatever the document lengths
_PARQUET_BATCH = 1024


class PreprocessError(ValueError):
    """Bad input, as one line: ``FILE[:LINE]: what is wrong``."""


@dataclass
class _Counters:
    """Running totals kept by the readers: input consumed (for the progress bar) and skips."""

    bytes: int = 0  # bytes of text/jsonl files read, skipped lines included
    records: int = 0  # lines, rows or records read, skipped ones included
    empty: int = 0  # empty lines / empty text values skipped


@dataclass
class _Input:
    path: str
    kind: str  # text | jsonl | parquet | hf
    size: int = 0  # bytes on disk (text, jsonl)
    rows: int | None = None  # records (parquet, hf)
    dataset: Any = None  # the loaded `datasets.Dataset` (hf)


# ------------------------------------------------------------------------------------------------
# Readers
# ------------------------------------------------------------------------------------------------


def _resolve(path: str, json_key: str, hf_split: str) -> _Input:
    """Classify and check one input before anything is written, so a typo fails at once."""
    p = Path(path)
    if p.is_dir():
        return _load_hf(path, json_key, hf_split)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in PARQUET_SUFFIXES:
            return _open_parquet(path, json_key)
        kind = "jsonl" if suffix in JSONL_SUFFIXES else "text"
        try:
            return _Input(path, kind, size=p.stat().st_size)
        except OSError as exc:
            raise PreprocessError(f"{path}: {exc.strerror}") from None
    if p.exists():
        raise PreprocessError(f"{path}: not a regular file or directory")
    if _DATASET_NAME.match(path) and not path.lower().endswith(_FILE_SUFFIXES):
        return _load_hf(path, json_key, hf_split)
    raise PreprocessError(f"{path}: no such file or directory")


def _decode_line(raw: bytes, path: str, lineno: int) -> str:
    try:
        # utf-8-sig on line 1 drops a byte-order mark instead of making it part of the text.
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise PreprocessError(
            f"{path}:{lineno}: invalid UTF-8 at byte {exc.start} of the line ({exc.reason})"
        ) from None


def _read_text(src: _Input, split_documents: str, counters: _Counters) -> Iterator[str]:
    with open(src.path, "rb") as f:
        if split_documents == "none":
            parts = []
            for lineno, raw in enumerate(f, 1):
                parts.append(_decode_line(raw, src.path, lineno))
                counters.bytes += len(raw)
            counters.records += 1
            text = "".join(parts).rstrip("\r\n")
            if text.strip():
                yield text
            return
        for lineno, raw in enumerate(f, 1):
            text = _decode_line(raw, src.path, lineno).rstrip("\r\n")
            counters.bytes += len(raw)
            counters.records += 1
            if not text.strip():
                counters.empty += 1
                continue
            yield text


def _text_value(value: Any, json_key: str, where: str, counters: _Counters) -> str | None:
    """A record's text, or None when it is empty (counted as skipped)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        counters.empty += 1
        return None
    if not isinstance(value, str):
        raise PreprocessError(f"{where}: {json_key!r} is {type(value).__name__}, expected a string")
    return value


def _read_jsonl(src: _Input, json_key: str, counters: _Counters) -> Iterator[str]:
    with open(src.path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode_line(raw, src.path, lineno)
            counters.bytes += len(raw)
            counters.records += 1
            where = f"{src.path}:{lineno}"
            if not line.strip():
                counters.empty += 1
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PreprocessError(
                    f"{where}: invalid JSON ({exc.msg} at column {exc.colno})"
                ) from None
            if not isinstance(obj, dict):
                raise PreprocessError(
                    f"{where}: expected a JSON object, found {type(obj).__name__}"
                )
            if json_key not in obj:
                keys = ", ".join(repr(k) for k in obj) or "none"
                raise PreprocessError(f"{where}: no key {json_key!r} (keys: {keys})")
            text = _text_value(obj[json_key], json_key, where, counters)
            if text is not None:
                yield text


def _open_parquet(path: str, json_key: str) -> _Input:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        reason = " ".join(str(exc).split())
        raise PreprocessError(f"{path}: not a readable parquet file ({reason})") from None
    names = pf.schema_arrow.names
    if json_key not in names:
        cols = ", ".join(repr(n) for n in names) or "none"
        raise PreprocessError(f"{path}: no column {json_key!r} (columns: {cols})")
    return _Input(path, "parquet", rows=pf.metadata.num_rows, dataset=pf)


def _read_parquet(src: _Input, json_key: str, counters: _Counters) -> Iterator[str]:
    row = 0
    # iter_batches reads one row group at a time and only the one column.
    for batch in src.dataset.iter_batches(batch_size=_PARQUET_BATCH, columns=[json_key]):
        for value in batch.column(0).to_pylist():
            row += 1
            counters.records += 1
            text = _text_value(value, json_key, f"{src.path}: row {row}", counters)
            if text is not None:
                yield text


def _load_hf(path: str, json_key: str, hf_split: str) -> _Input:
    import datasets

    p = Path(path)
    try:
        if p.is_dir() and any((p / m).is_file() for m in _HF_SAVED_MARKERS):
            ds = datasets.load_from_disk(path)
        else:
            ds = datasets.load_dataset(path, split=hf_split)
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ValueError, ...)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise PreprocessError(f"{path}: cannot load as a dataset ({reason})") from None
    if isinstance(ds, datasets.DatasetDict):
        if hf_split not in ds:
            splits = ", ".join(repr(s) for s in ds) or "none"
            raise PreprocessError(f"{path}: no split {hf_split!r} (splits: {splits})")
        ds = ds[hf_split]
    if json_key not in (ds.column_names or []):
        cols = ", ".join(repr(c) for c in ds.column_names or []) or "none"
        raise PreprocessError(f"{path}: no column {json_key!r} (columns: {cols})")
    return _Input(path, "hf", rows=len(ds), dataset=ds.select_columns([json_key]))


def _read_hf(src: _Input, json_key: str, counters: _Counters) -> Iterator[str]:
    row = 0
    for batch in src.dataset.iter(batch_size=_PARQUET_BATCH):  # memory-mapped arrow, batch-wise
        for value in batch[json_key]:
            row += 1
            counters.records += 1
            text = _text_value(value, json_key, f"{src.path}: row {row}", counters)
            if text is not None:
                yield text


def _read(src: _Input, json_key: str, split_documents: str, counters: _Counters) -> Iterator[str]:
    if src.kind == "text":
        docs = _read_text(src, split_documents, counters)
    elif src.kind == "jsonl":
        docs = _read_jsonl(src, json_key, counters)
    elif src.kind == "parquet":
        docs = _read_parquet(src, json_key, counters)
    else:
        docs = _read_hf(src, json_key, counters)
    count, empty_before = 0, counters.empty
    for doc in docs:
        count += 1
        yield doc
    if count == 0:
        what = "empty file" if src.kind != "hf" else "empty dataset"
        if counters.empty > empty_before:
            what = "only empty lines or empty texts"
        raise PreprocessError(f"{src.path}: no documents ({what})")


def _check_options(split_documents: str) -> None:
    if split_documents not in SPLIT_MODES:
        raise PreprocessError(f"split_documents={split_documents!r}: choose one of {SPLIT_MODES}")


def iter_documents(
    path: str, json_key: str = "text", split_documents: str = "line", hf_split: str = "train"
) -> Iterator[str]:
    """The documents of one input, lazily, exactly as :func:`preprocess` sees them."""
    _check_options(split_documents)
    yield from _read(_resolve(path, json_key, hf_split), json_key, split_documents, _Counters())


# ------------------------------------------------------------------------------------------------
# Tokenising (in-process or in worker processes)
# ------------------------------------------------------------------------------------------------

_WORKER_TOKENIZER: Any = None
_WORKER_DTYPE: Any = None


def _init_worker(source: Any, dtype: Any) -> None:
    """Pool initializer: build the tokenizer in the worker (spawn-safe: only a small spec is
    pickled), and leave Ctrl-C to the parent, which cleans up and terminates the pool."""
    global _WORKER_TOKENIZER, _WORKER_DTYPE
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_DTYPE = dtype
    try:
        _WORKER_TOKENIZER = (
            build_tokenizer(*source) if isinstance(source, TokenizerSpec) else source
        )
    except Exception as exc:
        # Raising here would make the pool respawn the worker forever; fail the first task.
        _WORKER_TOKENIZER = exc


def _worker_encode(chunk: tuple) -> tuple:
    if isinstance(_WORKER_TOKENIZER, BaseException):
        raise _WORKER_TOKENIZER
    return _encode_chunk(_WORKER_TOKENIZER, _WORKER_DTYPE, chunk)


def _encode_chunk(tokenizer: Tokenizer, dtype: Any, chunk: tuple) -> tuple:
    """Token ids of a chunk's documents, each followed by EOS, flat, plus per-document lengths."""
    texts, consumed_bytes, consumed_records = chunk
    eos, vocab = tokenizer.eos_id, tokenizer.vocab_size
    flat: list[int] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    text_bytes = 0
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text)
        flat.extend(ids)
        flat.append(eos)
        lengths[i] = len(ids) + 1
        text_bytes += len(text.encode("utf-8"))
    tokens = np.asarray(flat, dtype=np.int64)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        bad = int(tokens.min() if tokens.min() < 0 else tokens.max())
        raise PreprocessError(f"tokenizer produced id {bad}, outside its vocabulary [0, {vocab})")
    return tokens.astype(dtype), lengths, text_bytes, consumed_bytes, consumed_records


def _chunks(sources, json_key, split_documents, counters) -> Iterator[tuple]:
    """Documents grouped for the workers, each chunk carrying the input it consumed (progress)."""
    texts: list[str] = []
    chars = 0
    seen_bytes = seen_records = 0
    for src in sources:
        for doc in _read(src, json_key, split_documents, counters):
            texts.append(doc)
            chars += len(doc)
            if len(texts) >= _CHUNK_DOCS or chars >= _CHUNK_CHARS:
                yield texts, counters.bytes - seen_bytes, counters.records - seen_records
                seen_bytes, seen_records = counters.bytes, counters.records
                texts, chars = [], 0
    if texts:
        yield texts, counters.bytes - seen_bytes, counters.records - seen_records


def _bounded(chunks: Iterator[tuple], slots: threading.Semaphore, stop: threading.Event):
    """Backpressure for ``Pool.imap``, whose feeder thread would otherwise read all input ahead
    of the workers (and hold it in memory); ``stop`` releases the feeder when the run aborts."""
    try:
        for chunk in chunks:
            while not slots.acquire(timeout=0.1):
                if stop.is_set():
                    return
            if stop.is_set():
                return
            yield chunk
    finally:
        chunks.close()  # closes the input files now, not whenever the generator is collected


def _encoded(tokenizer, dtype, chunks: Iterator[tuple], workers: int) -> Iterator[tuple]:
    if workers == 1:
        for chunk in chunks:
            yield _encode_chunk(tokenizer, dtype, chunk)
        return
    spec = getattr(tokenizer, "spec", None)
    source = spec if isinstance(spec, TokenizerSpec) else tokenizer
    slots, stop = threading.Semaphore(4 * workers), threading.Event()
    # spawn: workers never inherit torch/megatron threads or locks from this process.
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(source, dtype))
    try:
        for result in pool.imap(_worker_encode, _bounded(chunks, slots, stop)):
            slots.release()
            yield result
        pool.close()
        pool.join()
    finally:
        stop.set()
        pool.terminate()


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------


def _progress_bar(sources: list[_Input], enabled: bool):
    """Bytes when every input is a text/jsonl file (the total is known), else records."""
    from tqdm import tqdm

    if all(s.kind in ("text", "jsonl") for s in sources):
        total = sum(s.size for s in sources)
        return tqdm(total=total, unit="B", unit_scale=True, disable=not enabled), "bytes"
    rows = [s.rows for s in sources if s.kind in ("parquet", "hf")]
    total = sum(rows) if len(rows) == len(sources) else None
    return tqdm(total=total, unit="doc", unit_scale=True, disable=not enabled), "records"


def _publish(tmp: str, prefix: str) -> None:
    """Old .idx first, new .idx last: an interrupted rename leaves no .idx rather than a new
    .bin under an old index."""
    Path(prefix + ".idx").unlink(missing_ok=True)
    os.replace(tmp + ".bin", prefix + ".bin")
    os.replace(tmp + ".idx", prefix + ".idx")


def preprocess(
    inputs: list[str],
    output_prefix: str,
    tokenizer: Tokenizer,
    json_key: str = "text",
    split_documents: str = "line",
    workers: int = 1,
    hf_split: str = "train",
    progress: bool = True,
) -> dict:
    """Tokenise ``inputs`` into ``OUTPUT_PREFIX.bin/.idx`` and return a summary.

    Inputs: text files (one document per line, or per file with ``split_documents="none"``),
    JSON-lines (``.jsonl``/``.json``, field ``json_key``), parquet (column ``json_key``),
    a `datasets` folder saved with ``save_to_disk``, or a `datasets` name (split ``hf_split``).
    Empty lines/texts are skipped and counted. ``progress=False`` shows no bar and prints no
    summary. Raises :class:`PreprocessError` for bad input; then no output is left behind.
    """
    if not inputs:
        raise PreprocessError("no inputs given")
    _check_options(split_documents)
    if workers < 1:
        raise PreprocessError(f"workers={workers}: must be >= 1")
    sources = [_resolve(str(p), json_key, hf_split) for p in inputs]

    with warnings.catch_warnings():  # megatron-core announces absent optional accelerators
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    dtype = DType.optimal_dtype(tokenizer.vocab_size)  # uint16 below 65500 ids, else int32
    prefix = str(output_prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{prefix}.tmp-{os.getpid()}"
    counters = _Counters()
    documents = tokens = text_bytes = 0
    start = time.perf_counter()
    builder = results = None
    bar, unit = _progress_bar(sources, progress)
    try:
        builder = IndexedDatasetBuilder(tmp + ".bin", dtype=dtype)
        chunks = _chunks(sources, json_key, split_documents, counters)
        results = _encoded(tokenizer, dtype, chunks, workers)
        for ids, lengths, nbytes, consumed_bytes, consumed_records in results:
            offset = 0
            for n in lengths.tolist():
                builder.add_document(ids[offset : offset + n], [n])
                offset += n
            documents += len(lengths)
            tokens += int(ids.size)
            text_bytes += nbytes
            bar.update(consumed_bytes if unit == "bytes" else consumed_records)
        bar.update(max(0, (counters.bytes if unit == "bytes" else counters.records) - bar.n))
        builder.finalize(tmp + ".idx")
        _publish(tmp, prefix)
    except BaseException:
        bar.leave = False  # the error line, not a half-full bar, is the last thing shown
        if results is not None:
            results.close()  # stops the worker pool before the files go
        if builder is not None:
            builder.data_file.close()
        for ext in (".bin", ".idx"):
            Path(tmp + ext).unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    summary = {
        "output_prefix": prefix,
        "documents": documents,
        "tokens": tokens,
        "empty_skipped": counters.empty,
        "text_bytes": text_bytes,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        "mb_per_s": text_bytes / 1e6 / seconds if seconds > 0 else 0.0,
        "dtype": np.dtype(dtype).name,
        "vocab_size": tokenizer.vocab_size,
        "workers": workers,
    }
    if progress:
        print(
            f"preprocess: {documents:,} documents, {tokens:,} tokens "
            f"({counters.empty:,} empty skipped) in {seconds:.1f} s: "
            f"{summary['tokens_per_s']:,.0f} tokens/s, {summary['mb_per_s']:.2f} MB/s "
            f"-> {prefix}.bin/.idx ({summary['dtype']})"
        )
    return summary


# ------------------------------------------------------------------------------------------------
# Command line (the `mdm` CLI and tools/preprocess_data.py share these)
# ------------------------------------------------------------------------------------------------


def add_preprocess_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="text (one document per line), .jsonl/.json, .parquet, a datasets save_to_disk "
        "folder or a datasets name",
    )
    parser.add_argument("--output-prefix", required=True, metavar="PREFIX", help="writes .bin/.idx")
    parser.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    parser.add_argument(
        "--tokenizer-model", metavar="PATH", help="sentencepiece .model, tokenizer.json or folder"
    )
    parser.add_argument("--json-key", default="text", help="field/column with the text")
    parser.add_argument(
        "--split-documents",
        choices=SPLIT_MODES,
        default="line",
        help="text files: one document per line (line) or per file (none)",
    )
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    parser.add_argument("--hf-split", default="train", help="split of a datasets input")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or summary")
    return parser


def _cli_error(command: str, exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = " ".join(str(exc).split())
    print(f"mdm {command}: error: {text}", file=sys.stderr)
    return 2


def run_preprocess_args(args: argparse.Namespace) -> int:
    try:
        tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model)
        preprocess(
            args.input,
            args.output_prefix,
            tokenizer,
            json_key=args.json_key,
            split_documents=args.split_documents,
            workers=args.workers,
            hf_split=args.hf_split,
            progress=not getattr(args, "no_progress", False),
        )
    except (PreprocessError, ConfigError, OSError) as exc:
        return _cli_error("preprocess", exc)
    except KeyboardInterrupt:  # the partial output is already removed
        print("mdm preprocess: interrupted", file=sys.stderr)
        return 130
    return 0


def add_tokenizer_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--type", default="sentencepiece", choices=("sentencepiece",))
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH", help="training text")
    parser.add_argument(
        "--model-prefix", required=True, metavar="PREFIX", help="writes .model/.vocab"
    )
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--model-type", default="bpe", choices=("bpe", "unigram"))
    parser.add_argument("--character-coverage", type=float, default=1.0)
    parser.add_argument("--json-key", default="text", help="field/column with the text")
    parser.add_argument(
        "--byte-fallback", action="store_true", help="unseen characters as bytes (+256 ids)"
    )
    return parser


def run_tokenizer_train_args(args: argparse.Namespace) -> int:
    try:
        path = train_sentencepiece(
            args.input,
            args.model_prefix,
            args.vocab_size,
            model_type=args.model_type,
            character_coverage=args.character_coverage,
            json_key=args.json_key,
            byte_fallback=args.byte_fallback,
        )
    except (ValueError, OSError) as exc:  # PreprocessError and ConfigError are ValueErrors
        return _cli_error("tokenizer train", exc)
    print(f"tokenizer: wrote {path} and {path.with_suffix('.vocab')}")
    return 0

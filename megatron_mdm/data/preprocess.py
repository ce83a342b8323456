"""Turn raw text into a megatron-core indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``, with
the tokenizer fingerprint ``PREFIX.tokenizer.json`` beside them: docs/design.md §12).

Tokenising once, ahead of training, keeps tokenizers out of the training loop and lets every rank
memory-map the same token stream. Each document is one sequence ending with EOS, so packing can
cut documents anywhere and still see where one ends.

Choices that matter at corpus scale:
- Inputs are read lazily (line by line, parquet batch by batch), so memory stays flat whatever
  the file size; only ``split_documents="whole-file"`` holds one whole file, since it is one
  document (``blank-line`` holds one paragraph).
- Workers tokenise chunks of documents while the main process reads and writes; ``imap`` keeps
  chunks in input order, so the output is byte-identical for any number of workers.
- Bad input stops the run with one line naming the file and line, and the output appears only
  once complete (temp files, then rename): a half-written dataset is never mistaken for data.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from megatron_mdm.config import ConfigError
from megatron_mdm.data.readers import (
    DOCUMENT_MODES,
    SPLIT_MODES,
    Counters,
    InputSource,
    PreprocessError,
    check_split_mode,
    document_mode,
    read_documents,
    resolve_input,
)
from megatron_mdm.data.tokenizer_sidecar import SIDECAR_SUFFIX, write_sidecar
from megatron_mdm.data.tokenizers import (
    TOKENIZER_TYPES,
    Tokenizer,
    TokenizerSpec,
    build_tokenizer,
)
from megatron_mdm.utils import one_line

__all__ = [
    "add_preprocess_arguments",
    "cli_error",
    "preprocess",
    "run_preprocess_args",
]

_CHUNK_DOCS = 256  # documents per worker task: large enough to amortise pickling
_CHUNK_CHARS = 1 << 20  # ... but bounded in size, whatever the document lengths


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
        for doc in read_documents(src, json_key, split_documents, counters):
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


def _progress_bar(sources: list[InputSource], enabled: bool):
    """Bytes when every input is a text/jsonl file (the total is known), else records."""
    from tqdm import tqdm

    if all(s.kind in ("text", "jsonl") for s in sources):
        total = sum(s.size for s in sources)
        return tqdm(total=total, unit="B", unit_scale=True, disable=not enabled), "bytes"
    rows = [s.rows for s in sources if s.kind in ("parquet", "hf")]
    total = sum(rows) if len(rows) == len(sources) else None
    return tqdm(total=total, unit="doc", unit_scale=True, disable=not enabled), "records"


_OUTPUTS = (".bin", SIDECAR_SUFFIX, ".idx")  # publication order: the .idx completes a dataset


def _publish(tmp: str, prefix: str) -> None:
    """Old .idx first, new .idx last: an interrupted rename leaves no .idx rather than a new
    .bin (or tokenizer sidecar) under an old index."""
    Path(prefix + ".idx").unlink(missing_ok=True)
    for ext in _OUTPUTS:
        os.replace(tmp + ext, prefix + ext)


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

    Inputs: text files (``split_documents``: one document per ``line``, per paragraph with
    ``blank-line``, per file with ``whole-file`` (old name ``none``), or every file read as JSON
    lines with ``jsonl``), JSON-lines (``.jsonl``/``.json``, field ``json_key``), parquet (column
    ``json_key``),
    a `datasets` folder saved with ``save_to_disk``, or a `datasets` name (split ``hf_split``).
    Empty lines/texts are skipped and counted. ``progress=False`` shows no bar and prints no
    summary. Raises :class:`PreprocessError` for bad input; then no output is left behind.
    """
    if not inputs:
        raise PreprocessError("no inputs given")
    check_split_mode(split_documents)
    if workers < 1:
        raise PreprocessError(f"workers={workers}: must be >= 1")
    sources = [resolve_input(str(p), json_key, hf_split, split_documents) for p in inputs]

    with warnings.catch_warnings():  # megatron-core announces absent optional accelerators
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    dtype = DType.optimal_dtype(tokenizer.vocab_size)  # uint16 below 65500 ids, else int32
    prefix = str(output_prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{prefix}.tmp-{os.getpid()}"
    counters = Counters()
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
        write_sidecar(tmp + SIDECAR_SUFFIX, tokenizer)
        _publish(tmp, prefix)
    except BaseException:
        bar.leave = False  # the error line, not a half-full bar, is the last thing shown
        if results is not None:
            results.close()  # stops the worker pool before the files go
        if builder is not None:
            builder.data_file.close()
        for ext in _OUTPUTS:
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
        "--documents",
        choices=DOCUMENT_MODES,
        help="how text files become documents: one per line (default), per paragraph "
        "(blank-line), per file (whole-file); jsonl: read every file as JSON lines",
    )
    parser.add_argument(
        "--split-documents",
        choices=SPLIT_MODES,
        help="older spelling of --documents: line, or none (= whole-file)",
    )
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    parser.add_argument("--hf-split", default="train", help="split of a datasets input")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or summary")
    return parser


def cli_error(command: str, exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = one_line(" ".join(str(exc).split()))
    print(f"mdm {command}: error: {text}", file=sys.stderr)
    return 2


def documents_from_args(args: argparse.Namespace) -> str:
    """`--documents`, or the older `--split-documents`; both given must agree."""
    new, old = getattr(args, "documents", None), getattr(args, "split_documents", None)
    if new and old and document_mode(old) != new:
        raise PreprocessError(f"--documents {new} and --split-documents {old} disagree")
    return new or document_mode(old or "line")


def run_preprocess_args(args: argparse.Namespace) -> int:
    try:
        tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model)
        preprocess(
            args.input,
            args.output_prefix,
            tokenizer,
            json_key=args.json_key,
            split_documents=documents_from_args(args),
            workers=args.workers,
            hf_split=args.hf_split,
            progress=not getattr(args, "no_progress", False),
        )
    except (PreprocessError, ConfigError, OSError) as exc:
        return cli_error("preprocess", exc)
    except KeyboardInterrupt:  # the partial output is already removed
        print("mdm preprocess: interrupted", file=sys.stderr)
        return 130
    return 0

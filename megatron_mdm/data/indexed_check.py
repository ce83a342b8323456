"""Checks of a megatron-core indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``) before anything
reads it (docs/design.md §12).

megatron-core trusts both files: a truncated ``.bin`` or ``.idx``, or a flipped byte in either,
surfaces as a 50-80 line traceback from deep inside its readers (or an ``IndexError`` in the
embedding, many steps later) that never names the file. These checks run at dataset build, on
every rank, before the first step, and report one line naming the file:

- ``.idx``: magic, version and token dtype of the header; the file size the header's counts
  imply (exactly, so a truncated or padded index is caught); non-negative sequence lengths;
  every sequence pointer equal to the sum of the lengths before it (how megatron-core's writer
  lays them out, so any changed length or pointer is caught); document indices from 0 to the
  sequence count, never decreasing.
- ``.bin``: exactly the bytes the index describes.
- Token ids in ``[0, vocabulary)``: ``sample`` reads the whole ``.bin`` up to 64 MiB, else 64
  evenly spread windows of 1 MiB; ``full`` reads every token (in 16 MiB chunks).

The index arrays are checked in full in both modes: they are a small fraction of the data and
megatron-core reads them all at start-up anyway.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_mdm.config import DATA_VALIDATIONS
from megatron_mdm.utils import MDMError

__all__ = ["DATA_VALIDATIONS", "DatasetError", "IndexSummary", "check_indexed_dataset"]

HEADER_BYTES = 34  # magic (9) + version (8) + dtype code (1) + sequence count (8) + documents (8)
SAMPLE_WHOLE_BYTES = 64 << 20  # sample mode reads a .bin up to this size in full
SAMPLE_WINDOWS = 64  # ... and beyond it this many evenly spread windows
SAMPLE_WINDOW_BYTES = 1 << 20
FULL_CHUNK_BYTES = 16 << 20
_INDEX_CHUNK = 1 << 22  # index entries per vectorised pointer check (bounded memory)
_TOKEN_KINDS = "ui"  # unsigned / signed integers: a float dtype code is corruption


class DatasetError(MDMError):
    """A dataset file that is damaged or does not belong to the run: one line naming it."""


@dataclass(frozen=True)
class IndexSummary:
    """What the checked index holds."""

    prefix: str
    dtype: np.dtype
    sequences: int
    documents: int  # document_indices entries - 1
    tokens: int


def check_indexed_dataset(prefix: str, vocab_size: int, mode: str = "sample") -> IndexSummary:
    """Check ``prefix``.idx/.bin (module docstring) against a tokenizer of ``vocab_size`` ids;
    raise :class:`DatasetError` naming the file at fault."""
    if mode not in DATA_VALIDATIONS:
        raise ValueError(f"mode={mode!r}: expected one of {DATA_VALIDATIONS}")
    prefix = str(prefix)
    idx = prefix + ".idx"
    dtype, sequences, doc_entries = _read_header(idx)
    index = np.memmap(idx, mode="r", dtype=np.uint8)
    lengths = np.frombuffer(index, np.int32, sequences, HEADER_BYTES)
    pointers = np.frombuffer(index, np.int64, sequences, HEADER_BYTES + 4 * sequences)
    documents = np.frombuffer(index, np.int64, doc_entries, HEADER_BYTES + 12 * sequences)
    tokens = _check_pointers(idx, lengths, pointers, dtype.itemsize)
    _check_documents(idx, documents, sequences)
    binary = prefix + ".bin"
    size = _size(binary)
    if size != tokens * dtype.itemsize:
        raise DatasetError(
            f"{binary}: {size:,} bytes, but {idx} describes {tokens:,} {dtype.name} tokens = "
            f"{tokens * dtype.itemsize:,} bytes: truncated, or not this index's data file"
        )
    _check_token_ids(binary, dtype, tokens, vocab_size, mode, pointers)
    return IndexSummary(prefix, dtype, sequences, doc_entries - 1, tokens)


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError as exc:
        raise DatasetError(f"{path}: {exc.strerror}") from None


def _read_header(idx: str) -> tuple[np.dtype, int, int]:
    from megatron.core.datasets.indexed_dataset import _INDEX_HEADER, DType

    size = _size(idx)
    if size < HEADER_BYTES:
        raise DatasetError(f"{idx}: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    with open(idx, "rb") as f:
        head = f.read(HEADER_BYTES)
    if head[:9] != _INDEX_HEADER:
        raise DatasetError(f"{idx}: not a megatron-core index (bad magic {head[:9]!r})")
    version, code, sequences, doc_entries = struct.unpack("<QBQQ", head[9:])
    if version != 1:
        raise DatasetError(f"{idx}: index version {version}, expected 1 (corrupted header?)")
    try:
        dtype = np.dtype(DType.dtype_from_code(code))
    except ValueError:
        dtype = None
    if dtype is None or dtype.kind not in _TOKEN_KINDS:
        raise DatasetError(f"{idx}: token dtype code {code} is not an integer type (corrupted?)")
    want = HEADER_BYTES + 12 * sequences + 8 * doc_entries
    if size not in (want, want + sequences):  # + one mode byte per sequence (multimodal)
        raise DatasetError(
            f"{idx}: {size:,} bytes, but its header describes {sequences:,} sequences and "
            f"{doc_entries:,} document indices = {want:,} bytes: truncated or corrupted"
        )
    return dtype, sequences, doc_entries


def _check_pointers(idx: str, lengths, pointers, itemsize: int) -> int:
    """Lengths >= 0 and pointer i == itemsize * sum(lengths[:i]); returns the token count."""
    total = 0
    for start in range(0, len(lengths), _INDEX_CHUNK):
        chunk = lengths[start : start + _INDEX_CHUNK].astype(np.int64)
        if chunk.size and chunk.min() < 0:
            i = start + int(np.argmax(chunk < 0))
            raise DatasetError(f"{idx}: sequence {i} has length {int(lengths[i])} (corrupted)")
        expect = (total + np.concatenate(([0], np.cumsum(chunk)[:-1]))) * itemsize
        bad = np.flatnonzero(pointers[start : start + chunk.size] != expect)
        if bad.size:
            i = start + int(bad[0])
            raise DatasetError(
                f"{idx}: sequence {i} starts at byte {int(pointers[i]):,}, but the lengths "
                f"before it put it at {int(expect[bad[0]]):,} (corrupted lengths or pointers)"
            )
        total += int(chunk.sum())
    return total


def _check_documents(idx: str, documents, sequences: int) -> None:
    if documents.size == 0 or documents[0] != 0 or documents[-1] != sequences:
        first = int(documents[0]) if documents.size else None
        last = int(documents[-1]) if documents.size else None
        raise DatasetError(
            f"{idx}: document indices run from {first} to {last}, expected 0 to the sequence "
            f"count {sequences} (corrupted)"
        )
    steps = np.diff(documents)
    if steps.size and steps.min() < 0:
        i = int(np.argmax(steps < 0)) + 1
        raise DatasetError(f"{idx}: document index {i} decreases (corrupted)")


def _windows(tokens: int, itemsize: int, mode: str) -> list[tuple[int, int]]:
    """(first token, token count) ranges of the .bin to read."""
    nbytes = tokens * itemsize
    if mode == "sample" and nbytes > SAMPLE_WHOLE_BYTES:
        per = SAMPLE_WINDOW_BYTES // itemsize
        starts = np.linspace(0, tokens - per, SAMPLE_WINDOWS).astype(np.int64)
        return [(int(s), per) for s in starts]
    per = FULL_CHUNK_BYTES // itemsize
    return [(s, min(per, tokens - s)) for s in range(0, tokens, per)]


def _check_token_ids(binary, dtype, tokens: int, vocab_size: int, mode: str, pointers) -> None:
    if tokens == 0:
        return
    data = np.memmap(binary, mode="r", dtype=dtype, shape=(tokens,))
    for first, count in _windows(tokens, dtype.itemsize, mode):
        window = np.asarray(data[first : first + count])
        bad = np.flatnonzero((window >= vocab_size) | (window < 0))
        if bad.size:
            pos = first + int(bad[0])
            seq = int(np.searchsorted(pointers, pos * dtype.itemsize, side="right")) - 1
            raise DatasetError(
                f"{binary}: token {pos:,} (sequence {seq}) is id {int(window[bad[0]])}, outside "
                f"the vocabulary [0, {vocab_size}) of the run's tokenizer: corrupted, or "
                "preprocessed with another tokenizer"
            )

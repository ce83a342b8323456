"""Input readers for preprocessing and tokenizer training: text (one document per line, or per
file), JSON lines, parquet and `datasets` (saved folders or names), all read lazily so memory
stays flat whatever the input size. Bad input is one line naming the file and line
(`PreprocessError`); counters record what was read and skipped, for progress and summaries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_mdm.utils import MDMError

__all__ = [
    "DOCUMENT_MODES",
    "SPLIT_MODES",
    "Counters",
    "InputSource",
    "PreprocessError",
    "check_split_mode",
    "document_mode",
    "iter_documents",
    "read_documents",
    "resolve_input",
]


class PreprocessError(MDMError):
    """Bad input, as one line: ``FILE[:LINE]: what is wrong``."""


# How a text file is cut into documents (`mdm preprocess --documents`): one per line, one per
# paragraph (runs of non-blank lines, separated by blank lines), one per file; `jsonl` reads
# every file input as JSON lines, whatever its suffix.
DOCUMENT_MODES = ("line", "blank-line", "whole-file", "jsonl")
SPLIT_MODES = ("line", "none")  # the older `--split-documents` spelling: none = whole-file
_MODE_ALIASES = {"none": "whole-file"}
JSONL_SUFFIXES = (".jsonl", ".json")  # Megatron's tools call JSON-lines files .json
PARQUET_SUFFIXES = (".parquet",)
_HF_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
# A bare `name` or `owner/name` with no file suffix is taken for a `datasets` dataset name.
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FILE_SUFFIXES = (".txt", ".text", ".md", *JSONL_SUFFIXES, *PARQUET_SUFFIXES, ".gz", ".csv")

_PARQUET_BATCH = 1024


@dataclass
class Counters:
    """Running totals kept by the readers: input consumed (for the progress bar) and skips."""

    bytes: int = 0  # bytes of text/jsonl files read, skipped lines included
    records: int = 0  # lines, rows or records read, skipped ones included
    empty: int = 0  # empty lines / empty text values skipped


@dataclass
class InputSource:
    path: str
    kind: str  # text | jsonl | parquet | hf
    size: int = 0  # bytes on disk (text, jsonl)
    rows: int | None = None  # records (parquet, hf)
    dataset: Any = None  # the loaded `datasets.Dataset` (hf)


# ------------------------------------------------------------------------------------------------
# Readers
# ------------------------------------------------------------------------------------------------


def resolve_input(path: str, json_key: str, hf_split: str, documents: str = "line") -> InputSource:
    """Classify and check one input before anything is written, so a typo fails at once.
    ``documents="jsonl"`` reads any file that is not parquet as JSON lines."""
    p = Path(path)
    if p.is_dir():
        return _load_hf(path, json_key, hf_split)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in PARQUET_SUFFIXES:
            return _open_parquet(path, json_key)
        jsonl = suffix in JSONL_SUFFIXES or document_mode(documents) == "jsonl"
        kind = "jsonl" if jsonl else "text"
        try:
            return InputSource(path, kind, size=p.stat().st_size)
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


def _read_paragraphs(f, src: InputSource, counters: Counters) -> Iterator[str]:
    """Documents separated by blank (or whitespace-only) lines, the lines of one document joined
    with a newline. Blank lines are separators here, not skipped empty documents."""
    lines: list[str] = []
    for lineno, raw in enumerate(f, 1):
        text = _decode_line(raw, src.path, lineno).rstrip("\r\n")
        counters.bytes += len(raw)
        counters.records += 1
        if text.strip():
            lines.append(text)
        elif lines:
            yield "\n".join(lines)
            lines = []
    if lines:
        yield "\n".join(lines)


def _read_text(src: InputSource, split_documents: str, counters: Counters) -> Iterator[str]:
    mode = document_mode(split_documents)
    with open(src.path, "rb") as f:
        if mode == "blank-line":
            yield from _read_paragraphs(f, src, counters)
            return
        if mode == "whole-file":
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


def _text_value(value: Any, json_key: str, where: str, counters: Counters) -> str | None:
    """A record's text, or None when it is empty (counted as skipped)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        counters.empty += 1
        return None
    if not isinstance(value, str):
        raise PreprocessError(f"{where}: {json_key!r} is {type(value).__name__}, expected a string")
    return value


def _read_jsonl(src: InputSource, json_key: str, counters: Counters) -> Iterator[str]:
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


def _open_parquet(path: str, json_key: str) -> InputSource:
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
    return InputSource(path, "parquet", rows=pf.metadata.num_rows, dataset=pf)


def _read_parquet(src: InputSource, json_key: str, counters: Counters) -> Iterator[str]:
    row = 0
    # iter_batches reads one row group at a time and only the one column.
    for batch in src.dataset.iter_batches(batch_size=_PARQUET_BATCH, columns=[json_key]):
        for value in batch.column(0).to_pylist():
            row += 1
            counters.records += 1
            text = _text_value(value, json_key, f"{src.path}: row {row}", counters)
            if text is not None:
                yield text


def _load_hf(path: str, json_key: str, hf_split: str) -> InputSource:
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
    return InputSource(path, "hf", rows=len(ds), dataset=ds.select_columns([json_key]))


def _read_hf(src: InputSource, json_key: str, counters: Counters) -> Iterator[str]:
    row = 0
    for batch in src.dataset.iter(batch_size=_PARQUET_BATCH):  # memory-mapped arrow, batch-wise
        for value in batch[json_key]:
            row += 1
            counters.records += 1
            text = _text_value(value, json_key, f"{src.path}: row {row}", counters)
            if text is not None:
                yield text


def read_documents(
    src: InputSource, json_key: str, split_documents: str, counters: Counters
) -> Iterator[str]:
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


def document_mode(split_documents: str) -> str:
    """The canonical :data:`DOCUMENT_MODES` name of a mode (``none`` is ``whole-file``)."""
    return _MODE_ALIASES.get(split_documents, split_documents)


def check_split_mode(split_documents: str) -> None:
    if document_mode(split_documents) not in DOCUMENT_MODES:
        choices = (*DOCUMENT_MODES, *_MODE_ALIASES)
        raise PreprocessError(f"split_documents={split_documents!r}: choose one of {choices}")


def iter_documents(
    path: str, json_key: str = "text", split_documents: str = "line", hf_split: str = "train"
) -> Iterator[str]:
    """The documents of one input, lazily, exactly as :func:`preprocess` sees them."""
    check_split_mode(split_documents)
    src = resolve_input(path, json_key, hf_split, split_documents)
    yield from read_documents(src, json_key, split_documents, Counters())

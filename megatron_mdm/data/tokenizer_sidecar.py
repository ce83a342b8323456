"""The tokenizer fingerprint that travels with a preprocessed dataset (docs/design.md §12).

Token ids mean nothing without the tokenizer that made them: training a sentencepiece-2000
dataset with the byte tokenizer died in ``F.embedding``, and a dataset made with a smaller
vocabulary than the run's trains silently on the wrong ids. ``mdm preprocess`` therefore writes
``PREFIX.tokenizer.json`` beside ``PREFIX.bin/.idx`` (published with them, before the ``.idx``,
so a complete dataset always has its sidecar), and training and evaluation compare it with their
own tokenizer and refuse a mismatch in one line. Datasets from before the sidecar still load;
the id-range check (``indexed_check``) is then the only safety net.

The fingerprint: tokenizer type, vocabulary size, EOS id, and a sha256 over the files that
define the tokenizer (their bytes, in file-name order; chat templates left out, since they do
not change ids); the byte tokenizer has no files and no hash. The model path is recorded for people, not
compared: a copied model file is the same tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from megatron_mdm.data.indexed_check import DatasetError
from megatron_mdm.utils import atomic_write_json

__all__ = [
    "SIDECAR_SUFFIX",
    "check_sidecar",
    "read_sidecar",
    "sidecar_path",
    "tokenizer_fingerprint",
    "write_sidecar",
]

SIDECAR_SUFFIX = ".tokenizer.json"
_COMPARED = ("type", "vocab_size", "eos_id", "files_sha256")
_HASH_CHUNK = 1 << 20


def sidecar_path(prefix: str) -> Path:
    return Path(str(prefix) + SIDECAR_SUFFIX)


def _name(path: Path) -> str:
    return path.name


def _files_digest(files: list[Path]) -> str | None:
    files = sorted((f for f in files if not f.name.startswith("chat_template")), key=_name)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:  # bytes only: a model file copied under another name is the same model
        with open(path, "rb") as f:
            while block := f.read(_HASH_CHUNK):
                digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> dict:
    """What identifies ``tokenizer`` (see the module docstring)."""
    files = [Path(p) for p in (tokenizer.files() if hasattr(tokenizer, "files") else [])]
    spec = getattr(tokenizer, "spec", None)
    return {
        "type": tokenizer.name,
        "vocab_size": int(tokenizer.vocab_size),
        "eos_id": int(tokenizer.eos_id),
        "files_sha256": _files_digest(files),
        "model": getattr(spec, "model", None),
    }


def write_sidecar(path: str | Path, tokenizer) -> None:
    atomic_write_json(path, {"tokenizer": tokenizer_fingerprint(tokenizer)})


def read_sidecar(prefix: str) -> dict | None:
    """The recorded fingerprint of dataset ``prefix``; None for a dataset without a sidecar."""
    path = sidecar_path(prefix)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))["tokenizer"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a tokenizer sidecar ({type(exc).__name__})") from None
    if not isinstance(record, dict) or not all(k in record for k in _COMPARED):
        raise DatasetError(f"{path}: not a tokenizer sidecar (missing {', '.join(_COMPARED)})")
    return record


def _describe(record: dict) -> str:
    text = f"{record['type']} ({record['vocab_size']} ids, EOS {record['eos_id']}"
    if record.get("files_sha256"):
        text += f", files sha256 {record['files_sha256'][:12]}"
    if record.get("model"):
        text += f", {record['model']}"
    return text + ")"


def check_sidecar(prefix: str, tokenizer, whose: str = "the run's tokenizer") -> bool:
    """Refuse dataset ``prefix`` when its sidecar names another tokenizer than ``tokenizer``;
    returns False when it has no sidecar (an older dataset: nothing to compare)."""
    recorded = read_sidecar(prefix)
    if recorded is None:
        return False
    current = tokenizer_fingerprint(tokenizer)
    if any(recorded[k] != current[k] for k in _COMPARED):
        raise DatasetError(
            f"{sidecar_path(prefix)}: {prefix} was preprocessed with {_describe(recorded)}, "
            f"but {whose} is {_describe(current)}: preprocess it again with this tokenizer, or "
            "train with the one it was made with (data.tokenizer)"
        )
    return True

"""One tokenizer interface over the byte tokenizer, sentencepiece models and Hugging Face tokenizers.

Preprocessing, training and export all need the same few facts about a tokenizer (how many ids
it can emit, which id ends a document, which files define it so they can travel with a
checkpoint), whatever library produced it. Everything is loaded from local files only: a training
job must never depend on the Hugging Face hub being reachable. Heavy libraries are imported when a
tokenizer of that kind is built, so the byte tokenizer (quickstart, tests) needs none of them.

Conventions shared by every tokenizer here:
- ``encode`` adds no BOS/EOS: callers frame documents themselves (preprocessing appends EOS).
- ``decode`` drops special tokens and tolerates ids ``>= vocab_size`` (the model's ``[MASK]``),
  as :class:`~megatron_mdm.data.byte_tokenizer.ByteTokenizer` does.
- EOS is required (documents end with it, SFT pads with it): a tokenizer without one fails at
  build time. BOS and PAD fall back to EOS when the tokenizer has none (the GPT-2 convention).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from megatron_mdm.config import TOKENIZER_TYPES, ConfigError
from megatron_mdm.data.byte_tokenizer import ByteTokenizer

__all__ = [
    "TOKENIZER_TYPES",
    "ByteLevelTokenizer",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "TokenizerSpec",
    "build_tokenizer",
]

# TOKENIZER_TYPES (imported above) are the choices of data.tokenizer.type.
_TYPE_KEY = "data.tokenizer.type"
_MODEL_KEY = "data.tokenizer.model"


class TokenizerSpec(NamedTuple):
    """What :func:`build_tokenizer` needs to rebuild a tokenizer: small and picklable, so worker
    processes load their own copy instead of receiving a pickled library object."""

    type: str
    model: str | None


@runtime_checkable
class Tokenizer(Protocol):
    """The interface every tokenizer here implements (see the module docstring for conventions)."""

    name: str

    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int] | np.ndarray, mask_token: str | None = None) -> str: ...
    def files(self) -> list[Path]: ...


class ByteLevelTokenizer(ByteTokenizer):
    """:class:`ByteTokenizer` with the rest of the interface; it is defined by code, not files."""

    spec = TokenizerSpec("byte", None)

    def files(self) -> list[Path]:
        return []


def _flat_ids(ids: Iterable[int] | np.ndarray) -> list[int]:
    if isinstance(ids, np.ndarray):
        return [int(i) for i in ids.reshape(-1).tolist()]
    return [int(i) for i in ids]


def _decode_segments(ids, vocab_size: int, mask_token: str | None, decode_run) -> str:
    """Decode runs of real ids; ids past the vocabulary (``[MASK]``) are dropped or shown as
    ``mask_token``, so a half-denoised sample can be inspected with any tokenizer."""
    parts: list[str] = []
    run: list[int] = []
    for i in _flat_ids(ids):
        if i < 0:
            raise ValueError(f"token id {i} is negative")
        if i < vocab_size:
            run.append(i)
        elif mask_token is not None:
            parts.append(decode_run(run) if run else "")
            parts.append(mask_token)
            run = []
    parts.append(decode_run(run) if run else "")
    return "".join(parts)


class _SpecialIds:
    """BOS/EOS/PAD ids that a tokenizer resolves once at load time (`_bos`, `_eos`, `_pad`)."""

    _bos: int
    _eos: int
    _pad: int

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad


class SentencePieceTokenizer(_SpecialIds):
    """A sentencepiece ``.model`` file."""

    name = "sentencepiece"

    def __init__(self, model: str | os.PathLike[str]) -> None:
        import sentencepiece as spm

        self.path = Path(model)
        self.spec = TokenizerSpec("sentencepiece", str(model))
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as exc:
            raise _model_error(self.path, f"not a readable sentencepiece model ({exc})") from None
        self._eos = self._sp.eos_id()
        if self._eos < 0:
            raise _model_error(self.path, "sentencepiece model has no EOS piece (eos_id = -1)")
        self._bos = self._sp.bos_id() if self._sp.bos_id() >= 0 else self._eos
        self._pad = self._sp.pad_id() if self._sp.pad_id() >= 0 else self._eos

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int] | np.ndarray, mask_token: str | None = None) -> str:
        return _decode_segments(ids, self.vocab_size, mask_token, self._sp.decode)

    def files(self) -> list[Path]:
        return [self.path]

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


# Names of special tokens in common tokenizer.json files that carry no tokenizer_config.json.
_EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eos|>", "[EOS]", "<|EOS|>")
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>", "<|bos|>", "[BOS]")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<|padding|>")
_HF_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
_HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)


def _token_content(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer(_SpecialIds):
    """A Hugging Face tokenizer: a ``tokenizer.json`` file (``tokenizers`` library) or a folder
    saved by ``save_pretrained`` (``transformers.AutoTokenizer``, local files only)."""

    name = "hf"

    def __init__(self, model: str | os.PathLike[str]) -> None:
        self.path = Path(model)
        self.spec = TokenizerSpec("hf", str(model))
        # The transformers tokenizer of a folder (None for a bare tokenizer.json): its chat
        # template is what `data.sft.ChatTemplate(use_tokenizer_template=True)` renders with.
        self.hf = None
        if self.path.is_dir():
            self._load_folder()
        else:
            self._load_json()
        if self._eos is None:
            raise _model_error(
                self.path, "tokenizer has no EOS token (set eos_token in tokenizer_config.json)"
            )
        self._bos = self._eos if self._bos is None else self._bos
        self._pad = self._eos if self._pad is None else self._pad

    def _load_json(self) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        try:
            tok = RustTokenizer.from_file(str(self.path))
        except Exception as exc:  # the Rust side raises plain Exception subclasses
            raise _model_error(self.path, f"not a readable tokenizer.json ({exc})") from None
        self._files = [self.path]
        named: dict[str, str | None] = {}
        for name in _HF_CONFIG_FILES:  # a sibling config names the specials authoritatively
            sibling = self.path.parent / name
            if sibling.is_file():
                try:
                    cfg = json.loads(sibling.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise _model_error(sibling, f"unreadable ({exc})") from None
                self._files.append(sibling)
                for kind in ("bos", "eos", "pad"):
                    named.setdefault(kind, _token_content(cfg.get(f"{kind}_token")))

        def find(kind: str, candidates: tuple[str, ...]) -> int | None:
            names = (named[kind],) if named.get(kind) else candidates
            for token in names:
                tid = tok.token_to_id(token)
                if tid is not None:
                    return tid
            return None

        self._bos = find("bos", _BOS_NAMES)
        self._eos = find("eos", _EOS_NAMES)
        self._pad = find("pad", _PAD_NAMES)
        ids = list(tok.get_vocab(with_added_tokens=True).values())
        self._vocab = max(tok.get_vocab_size(with_added_tokens=True), max(ids, default=-1) + 1)
        self._encode = lambda text: tok.encode(text, add_special_tokens=False).ids
        self._decode = lambda ids: tok.decode(ids, skip_special_tokens=True)

    def _load_folder(self) -> None:
        from transformers import AutoTokenizer

        if not any((self.path / n).is_file() for n in _HF_TOKENIZER_FILES):
            raise _model_error(
                self.path, "folder has no tokenizer files (tokenizer.json, tokenizer_config.json)"
            )
        try:
            # trust_remote_code=False: a tokenizer folder's Python files are never run.
            tok = AutoTokenizer.from_pretrained(
                str(self.path), local_files_only=True, trust_remote_code=False
            )
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _model_error(self.path, f"not a loadable tokenizer folder ({msg})") from None
        names = set(_HF_TOKENIZER_FILES) | set(getattr(tok, "vocab_files_names", {}).values())
        self._files = sorted(p for p in (self.path / n for n in names) if p.is_file())
        self._bos, self._eos, self._pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
        self.hf = tok
        self._vocab = max(len(tok), max(tok.get_vocab().values(), default=-1) + 1)
        self._encode = lambda text: tok.encode(text, add_special_tokens=False)
        self._decode = lambda ids: tok.decode(ids, skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text))

    def decode(self, ids: Iterable[int] | np.ndarray, mask_token: str | None = None) -> str:
        return _decode_segments(ids, self.vocab_size, mask_token, self._decode)

    def files(self) -> list[Path]:
        return list(self._files)

    def __getstate__(self) -> dict:
        # The loaded objects hold lambdas; rebuild from the path instead.
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def _model_error(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}", key=_MODEL_KEY)


def build_tokenizer(type: str, model: str | None = None) -> Tokenizer:
    """The tokenizer named by ``data.tokenizer.type`` / ``data.tokenizer.model``.

    Raises :class:`ConfigError` (one line, naming the key and the path) for an unknown type, a
    missing or unreadable model, or a tokenizer without EOS.
    """
    if type not in TOKENIZER_TYPES:
        raise ConfigError(
            f"unknown tokenizer type {type!r} (choose one of {', '.join(TOKENIZER_TYPES)})",
            key=_TYPE_KEY,
        )
    if type == "byte":
        return ByteLevelTokenizer()
    if not model:
        raise ConfigError(f"required for tokenizer type {type}", key=_MODEL_KEY)
    path = Path(model).expanduser()
    if not path.exists():
        raise _model_error(path, "no such file or directory")
    if type == "sentencepiece":
        if not path.is_file():
            raise _model_error(path, "expected a sentencepiece .model file, found a directory")
        return SentencePieceTokenizer(path)
    return HFTokenizer(path)

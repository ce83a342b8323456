"""Byte-level tokenizer that needs no vocabulary file.

The quickstart and the tests must run without downloading a tokenizer, and a
byte vocabulary can represent any text, so nothing is ever out of
vocabulary. Ids 0..255 are the raw UTF-8 bytes; three specials follow.
The diffusion [MASK] id lives outside this vocabulary (the model appends it),
which is why :meth:`ByteTokenizer.decode` tolerates ids >= ``vocab_size``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["ByteTokenizer"]

_NUM_BYTES = 256


class ByteTokenizer:
    """UTF-8 bytes as ids, plus BOS=256, EOS=257, PAD=258."""

    name = "byte"

    @property
    def vocab_size(self) -> int:
        return _NUM_BYTES + 3

    @property
    def bos_id(self) -> int:
        return _NUM_BYTES

    @property
    def eos_id(self) -> int:
        return _NUM_BYTES + 1

    @property
    def pad_id(self) -> int:
        return _NUM_BYTES + 2

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text``; no specials, so callers choose how documents are framed."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int] | np.ndarray, mask_token: str | None = None) -> str:
        """Text of ``ids``, tolerant of anything a partially denoised sample contains.

        Specials are dropped. Ids >= ``vocab_size`` (a [MASK] id) are dropped
        too, or shown as ``mask_token`` when given so a half-denoised sample
        can be inspected. Invalid UTF-8 (a model can emit any byte sequence)
        becomes U+FFFD rather than raising.
        """
        flat = np.asarray(ids).reshape(-1).tolist() if isinstance(ids, np.ndarray) else ids
        parts: list[str] = []
        buf = bytearray()
        for raw in flat:
            i = int(raw)
            if i < 0:
                raise ValueError(f"token id {i} is negative")
            if i < _NUM_BYTES:
                buf.append(i)
            elif i >= self.vocab_size and mask_token is not None:
                # Flush so the mask lands at its position in the text.
                parts.append(buf.decode("utf-8", errors="replace"))
                buf.clear()
                parts.append(mask_token)
        parts.append(buf.decode("utf-8", errors="replace"))
        return "".join(parts)

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"

"""Vocabulary layout of the model: tokenizer ids, the `[MASK]` id and padding rows.

The padded size depends only on `make_vocab_size_divisible_by` (and must split evenly over TP
ranks), not on the TP size itself as in Megatron-LM, so that a model trained at TP=1 and one at
TP=2 have identical shapes and identical initial weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class VocabLayout:
    tokenizer_size: int  # ids [0, tokenizer_size) are real tokens
    mask_id: int
    padded_size: int  # rows of the embedding / output layer

    @classmethod
    def build(cls, tokenizer_size: int, mask_id: int | None, divisible_by: int, tp: int):
        mask_id = tokenizer_size if mask_id is None else mask_id
        needed = max(tokenizer_size, mask_id + 1)
        multiple = math.lcm(divisible_by, tp)
        padded = -(-needed // multiple) * multiple
        return cls(tokenizer_size, mask_id, padded)

    def invalid_output_ids(self) -> list[int]:
        """Ids the output layer must never predict: `[MASK]` and every padding row."""
        ids = set(range(self.tokenizer_size, self.padded_size))
        ids.add(self.mask_id)
        return sorted(ids)

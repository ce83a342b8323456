"""Documents packed into fixed windows, addressed by global sample index.

A sample is a pure function of (seed, global sample index): the index says which epoch and which
slot of that epoch's shuffled order, so any rank can build any sample and a resumed run continues
with exactly the samples an uninterrupted run would have read.
"""

from __future__ import annotations

import numpy as np

from megatron_mdm.config import ConfigError, DataConfig
from megatron_mdm.data.byte_tokenizer import ByteTokenizer
from megatron_mdm.data.synthetic_corpus import generate_corpus


class PackedTokenDataset:
    def __init__(self, tokens: np.ndarray, seq_length: int, seed: int):
        """`tokens` is the concatenated token stream; a sample is `seq_length + 1` tokens so that
        the ARM objective has its shifted targets (the MDM uses the first `seq_length`)."""
        self.tokens = tokens
        self.seq_length = seq_length
        self.seed = seed
        self.num_windows = (len(tokens) - 1) // seq_length
        if self.num_windows < 1:
            raise ConfigError(
                f"corpus has {len(tokens)} tokens, fewer than one sample of "
                f"model.seq_length+1={seq_length + 1}",
                key="model.seq_length",
            )
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            self._order_epoch = epoch
        return self._order

    def sample(self, global_index: int) -> np.ndarray:
        epoch, slot = divmod(global_index, self.num_windows)
        start = int(self._epoch_order(epoch)[slot]) * self.seq_length
        return self.tokens[start : start + self.seq_length + 1].astype(np.int64)


def load_documents(data: DataConfig) -> list[str]:
    if data.text_file is None:
        return generate_corpus()
    try:
        with open(data.text_file, encoding="utf-8") as f:
            docs = [line.rstrip("\n") for line in f if line.strip()]
    except FileNotFoundError:
        raise ConfigError("no such file", key="data.text_file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{data.text_file}: not UTF-8 ({exc.reason})", key="data.text_file"
        ) from None
    if not docs:
        raise ConfigError(f"{data.text_file} has no text", key="data.text_file")
    return docs


def build_tokenizer(data: DataConfig):
    if data.tokenizer.type != "byte":
        raise ConfigError(
            f"tokenizer type {data.tokenizer.type!r} is not available yet; use byte",
            key="data.tokenizer.type",
        )
    return ByteTokenizer()


def pack_documents(docs: list[str], tokenizer) -> np.ndarray:
    """Concatenate documents, each followed by EOS."""
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer.encode(doc))
        ids.append(tokenizer.eos_id)
    return np.asarray(ids, dtype=np.int32)

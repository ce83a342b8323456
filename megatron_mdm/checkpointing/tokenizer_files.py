"""Tokenizer files that stock `transformers.AutoTokenizer.from_pretrained(folder)` loads, for every
tokenizer type, written next to each export (docs/design.md §13.2):

- hf: the tokenizer's own files as they came (copied by `folder_io.write_tokenizer`); a bare
  tokenizer.json gets a tokenizer_config.json naming `PreTrainedTokenizerFast` and its EOS;
- sentencepiece: the model as `tokenizer.model` with a Llama-style tokenizer_config.json
  (`LlamaTokenizer`, no BOS/EOS added on encode, as our `encode`);
- byte: a `tokenizers` byte-level BPE without merges whose ids are the bytes 0..255, then
  `<|bos|>`, `<|eos|>`, `<|pad|>` and `[MASK]` at the model's mask id, saved as a
  `PreTrainedTokenizerFast` (tokenizer.json + tokenizer_config.json).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from megatron_mdm.data.tokenizers import Tokenizer

BYTE_SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")
MASK_TOKEN = "[MASK]"


def byte_tokenizer_fast(mask_id: int | None = None):
    """Our byte tokenizer (ids = UTF-8 bytes, BOS 256, EOS 257, PAD 258) as a transformers
    `PreTrainedTokenizerFast`; `[MASK]` at `mask_id` (ids between are `<|unused_k|>`)."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    specials = list(BYTE_SPECIALS)
    if mask_id is not None:
        specials += [f"<|unused_{i}|>" for i in range(256 + len(specials), mask_id)]
        specials.append(MASK_TOKEN)
    vocab.update({token: 256 + i for i, token in enumerate(specials)})
    tok = RustTokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BYTE_SPECIALS[0],
        eos_token=BYTE_SPECIALS[1],
        pad_token=BYTE_SPECIALS[2],
        mask_token=MASK_TOKEN if mask_id is not None else None,
        clean_up_tokenization_spaces=False,
    )


def _write_config(folder: Path, config: dict) -> None:
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_auto_tokenizer(folder: Path, tok: Tokenizer, mask_id: int | None) -> None:
    """Make `folder` (which already holds copies of `tok.files()`) loadable by AutoTokenizer."""
    if tok.name == "byte":
        byte_tokenizer_fast(mask_id).save_pretrained(str(folder))
    elif tok.name == "sentencepiece":
        model = tok.files()[0]
        if model.name != "tokenizer.model":
            shutil.copyfile(model, folder / "tokenizer.model")
        sp = tok._sp  # type: ignore[attr-defined]
        piece = lambda i: sp.id_to_piece(i) if i >= 0 else None  # noqa: E731
        _write_config(
            folder,
            {
                "tokenizer_class": "LlamaTokenizer",
                "add_bos_token": False,
                "add_eos_token": False,
                "bos_token": piece(tok.bos_id),
                "eos_token": piece(tok.eos_id),
                "unk_token": piece(sp.unk_id()),
                "pad_token": piece(sp.pad_id()),
                "legacy": True,
                "clean_up_tokenization_spaces": False,
            },
        )
    elif (folder / "tokenizer.json").exists() and not (folder / "tokenizer_config.json").exists():
        from tokenizers import Tokenizer as RustTokenizer  # a bare tokenizer.json

        rust = RustTokenizer.from_file(str(folder / "tokenizer.json"))
        eos = rust.id_to_token(tok.eos_id)
        _write_config(folder, {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos})

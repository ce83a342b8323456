"""`mdm tokenizer train`: a sentencepiece model trained on the same inputs preprocessing reads.

Special ids are fixed (unk 0, bos 1, eos 2, pad 3) and text is kept as written, so configs can
rely on the ids and decode(encode(text)) gives every character seen in training back.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

from megatron_mdm.data.preprocess import cli_error
from megatron_mdm.data.readers import iter_documents

__all__ = ["add_tokenizer_train_arguments", "run_tokenizer_train_args", "train_sentencepiece"]


def train_sentencepiece(
    inputs: list[str],
    model_prefix: str,
    vocab_size: int,
    model_type: str = "bpe",
    character_coverage: float = 1.0,
    *,
    json_key: str = "text",
    byte_fallback: bool = False,
    input_sentence_size: int = 0,
) -> Path:
    """Train a sentencepiece model on ``inputs`` (any format preprocessing reads) and return the
    path of ``MODEL_PREFIX.model`` (``.vocab`` is written beside it).

    Special ids are fixed (unk 0, bos 1, eos 2, pad 3) so configs and tests can rely on them.
    Text is kept as written (identity normalisation, whitespace preserved, newline and tab as
    pieces) so that decode(encode(text)) gives the text back for every character seen in
    training; ``byte_fallback`` extends that to unseen characters (costs 256 ids).
    ``input_sentence_size`` > 0 samples that many lines instead of loading them all. Files are
    written under a temporary prefix and renamed, so a crash never leaves half a model.
    """
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram", "char", "word"):
        raise ValueError(f"model_type {model_type!r}: choose bpe, unigram, char or word")
    if vocab_size < 5:
        raise ValueError(f"vocab_size {vocab_size} is too small (4 ids are special)")
    target = Path(model_prefix)
    target.parent.mkdir(parents=True, exist_ok=True)
    failure: list[Exception] = []

    def lines() -> Iterator[str]:
        # An exception inside the trainer's iterator comes back as an opaque RuntimeError;
        # keep ours (one line, file and line number) and end the stream instead.
        try:
            for path in inputs:
                for doc in iter_documents(path, json_key=json_key):
                    yield from (line for line in doc.split("\n") if line.strip())
        except ValueError as exc:
            failure.append(exc)

    tmp_prefix = str(target.parent / f".{target.name}.tmp-{os.getpid()}")
    try:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=lines(),
                model_prefix=tmp_prefix,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                unk_id=0,
                bos_id=1,
                eos_id=2,
                pad_id=3,
                pad_piece="<pad>",
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                user_defined_symbols=["\n", "\t"],
                byte_fallback=byte_fallback,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=input_sentence_size > 0,
                minloglevel=2,
            )
        except RuntimeError as exc:
            if failure:
                raise failure[0] from None
            reason = " ".join(str(exc).split())
            raise ValueError(f"sentencepiece training failed: {reason}") from None
        if failure:
            raise failure[0]
        for ext in (".vocab", ".model"):  # .model last: its presence means a complete model
            os.replace(tmp_prefix + ext, str(target) + ext)
    finally:
        for ext in (".vocab", ".model"):
            Path(tmp_prefix + ext).unlink(missing_ok=True)
    return Path(str(target) + ".model")


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
        return cli_error("tokenizer train", exc)
    print(f"tokenizer: wrote {path} and {path.with_suffix('.vocab')}")
    return 0

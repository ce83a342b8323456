"""Damaged or foreign indexed data fails at dataset build, in one line naming the file
(docs/design.md §12): truncated or bit-flipped .bin/.idx files, token ids past the vocabulary,
and datasets preprocessed with another tokenizer (the PREFIX.tokenizer.json sidecar)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from megatron_mdm.config import ConfigError, load_config
from megatron_mdm.data import indexed_check
from megatron_mdm.data.indexed_check import DatasetError, check_indexed_dataset
from megatron_mdm.data.preprocess import preprocess
from megatron_mdm.data.pretrain_dataset import build_sample_sources
from megatron_mdm.data.sentencepiece_training import train_sentencepiece
from megatron_mdm.data.synthetic_corpus import generate_corpus
from megatron_mdm.data.tokenizer_sidecar import SIDECAR_SUFFIX, tokenizer_fingerprint
from megatron_mdm.data.tokenizers import build_tokenizer
from megatron_mdm.eval.ppl import read_token_stream

BYTE = build_tokenizer("byte")
RUN = [
    "model.seq_length=16",
    "train.global_batch_size=4",
    "train.micro_batch_size=4",
    "train.max_steps=5",
    "data.split=100,0,0",
]


def make_dataset(directory, name: str, tokenizer, docs: list[str]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    text = directory / f"{name}.txt"
    text.write_text("".join(d + "\n" for d in docs), encoding="utf-8")
    prefix = str(directory / name)
    preprocess([str(text)], prefix, tokenizer, progress=False)
    return prefix


def copy_dataset(prefix: str, new: str) -> str:
    for ext in (".bin", ".idx", SIDECAR_SUFFIX):
        shutil.copy(prefix + ext, new + ext)
    return new


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety")
    docs = [f"document {i} " + "abc " * (3 + i % 7) for i in range(200)]
    return d, make_dataset(d, "corpus", BYTE, docs)


@pytest.fixture(scope="module")
def sp_models(tmp_path_factory):
    """Two sentencepiece models of 200 ids trained on different text: same size, other ids."""
    d = tmp_path_factory.mktemp("sp")
    models = []
    for seed in (1, 2):
        text = d / f"t{seed}.txt"
        text.write_text("\n".join(generate_corpus(300, seed=seed)) + "\n")
        models.append(str(train_sentencepiece([str(text)], str(d / f"sp{seed}"), vocab_size=200)))
    return models


def build(prefix: str, tmp_path, tokenizer=BYTE, *overrides):
    cfg = load_config(None, [*RUN, *overrides])
    return build_sample_sources(cfg, tokenizer, [prefix], tmp_path / "cache")


def one_line_error(excinfo, path: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and path in message, message
    return message


# ------------------------------------------------------------------------ damaged files


def truncate(path, nbytes: int) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-nbytes])


def flip_token_high_byte(path, token: int) -> None:
    """uint16 token -> its high byte inverted: an id >= 0xFE00, far past any vocabulary here."""
    data = bytearray(open(path, "rb").read())
    data[2 * token + 1] ^= 0xFF
    open(path, "wb").write(bytes(data))


def flip_idx_length(path, sequence: int) -> None:
    data = bytearray(open(path, "rb").read())
    data[indexed_check.HEADER_BYTES + 4 * sequence] ^= 0x01  # a sequence length, low byte
    open(path, "wb").write(bytes(data))


CORRUPTIONS = {
    "truncated-bin": (".bin", lambda p: truncate(p + ".bin", 10)),
    "truncated-idx": (".idx", lambda p: truncate(p + ".idx", 8)),
    "flipped-bin": (".bin", lambda p: flip_token_high_byte(p + ".bin", 500)),
    "flipped-idx": (".idx", lambda p: flip_idx_length(p + ".idx", 17)),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_is_one_line_naming_the_file_at_dataset_build(
    single_rank_world, corpus, tmp_path, name
):
    directory, prefix = corpus
    damaged = copy_dataset(prefix, str(tmp_path / "damaged"))
    ext, damage = CORRUPTIONS[name]
    damage(damaged)
    with pytest.raises(DatasetError) as excinfo:
        build(damaged, tmp_path)
    one_line_error(excinfo, damaged + ext)
    assert not (tmp_path / "cache").exists()  # failed before megatron-core built anything


def test_every_single_byte_flip_of_an_index_is_caught(tmp_path):
    prefix = make_dataset(tmp_path, "small", BYTE, [f"doc {i} " * (1 + i % 4) for i in range(20)])
    check_indexed_dataset(prefix, BYTE.vocab_size)  # intact: passes
    intact = open(prefix + ".idx", "rb").read()
    damaged = copy_dataset(prefix, str(tmp_path / "flip"))
    missed = []
    for i in range(len(intact)):
        data = bytearray(intact)
        data[i] ^= 0xFF
        open(damaged + ".idx", "wb").write(bytes(data))
        try:
            check_indexed_dataset(damaged, BYTE.vocab_size)
            missed.append(i)
        except DatasetError as exc:
            assert "\n" not in str(exc) and damaged in str(exc)
    assert missed == []


def test_sample_mode_reads_windows_and_full_mode_reads_everything(corpus, tmp_path, monkeypatch):
    _, prefix = corpus
    damaged = copy_dataset(prefix, str(tmp_path / "d"))
    tokens = check_indexed_dataset(damaged, BYTE.vocab_size).tokens
    # Pretend the .bin is large: 4 windows of 32 tokens, evenly spread; token 1000 lies between.
    monkeypatch.setattr(indexed_check, "SAMPLE_WHOLE_BYTES", 64)
    monkeypatch.setattr(indexed_check, "SAMPLE_WINDOWS", 4)
    monkeypatch.setattr(indexed_check, "SAMPLE_WINDOW_BYTES", 64)
    starts = np.linspace(0, tokens - 32, 4).astype(int)
    assert not any(s <= 1000 < s + 32 for s in starts)
    flip_token_high_byte(damaged + ".bin", 1000)
    check_indexed_dataset(damaged, BYTE.vocab_size, "sample")  # between the windows: unseen
    with pytest.raises(DatasetError, match=r"d\.bin: token 1,000 \(sequence \d+\) is id"):
        check_indexed_dataset(damaged, BYTE.vocab_size, "full")
    flip_token_high_byte(damaged + ".bin", 1000)  # back to intact
    flip_token_high_byte(damaged + ".bin", int(starts[2]) + 5)  # inside a window
    with pytest.raises(DatasetError, match="outside the vocabulary"):
        check_indexed_dataset(damaged, BYTE.vocab_size, "sample")


def test_data_validate_setting_reaches_the_check(single_rank_world, corpus, tmp_path):
    _, prefix = corpus
    assert load_config(None, []).data.validate == "sample"
    with pytest.raises(ConfigError, match="data.validate"):
        load_config(None, ["data.validate=everything"])
    sources = build(prefix, tmp_path, BYTE, "data.validate=full")
    assert sources["train"] is not None
    # Ids past a smaller vocabulary are caught by the id check even without a sidecar.
    bare = copy_dataset(prefix, str(tmp_path / "bare"))
    (tmp_path / f"bare{SIDECAR_SUFFIX}").unlink()

    class Narrow:  # the byte tokenizer cut to 100 ids: letters of the corpus fall outside
        name, vocab_size, eos_id, pad_id = "narrow", 100, 57, 58

    with pytest.raises(DatasetError, match=r"bare\.bin: token \d+ .* outside the vocabulary"):
        build(bare, tmp_path, Narrow())


# ------------------------------------------------------------------------ tokenizer sidecar


def test_preprocess_writes_the_tokenizer_sidecar(corpus, sp_models):
    _, prefix = corpus
    record = json.loads(open(prefix + SIDECAR_SUFFIX).read())["tokenizer"]
    assert record == {
        "type": "byte",
        "vocab_size": 259,
        "eos_id": 257,
        "files_sha256": None,
        "model": None,
    }
    sp = build_tokenizer("sentencepiece", sp_models[0])
    digest = hashlib.sha256(open(sp_models[0], "rb").read()).hexdigest()
    assert tokenizer_fingerprint(sp)["files_sha256"] == digest
    assert tokenizer_fingerprint(sp)["vocab_size"] == 200


def test_dataset_of_another_tokenizer_is_refused(single_rank_world, sp_models, tmp_path):
    docs = generate_corpus(150, seed=4)
    sp1, sp2 = (build_tokenizer("sentencepiece", m) for m in sp_models)
    sp_data = make_dataset(tmp_path, "sp", sp1, docs)
    byte_data = make_dataset(tmp_path, "byte", BYTE, docs)
    # sentencepiece-200 ids all lie inside the byte vocabulary: only the sidecar can tell.
    check_indexed_dataset(sp_data, BYTE.vocab_size)
    for prefix, tokenizer, recorded in (
        (sp_data, BYTE, "sentencepiece (200 ids"),
        (byte_data, sp1, "byte (259 ids"),
        (sp_data, sp2, "sentencepiece (200 ids"),  # same size, another model file
    ):
        with pytest.raises(DatasetError) as excinfo:
            build(prefix, tmp_path, tokenizer)
        message = one_line_error(excinfo, prefix + SIDECAR_SUFFIX)
        assert f"preprocessed with {recorded}" in message
        with pytest.raises(DatasetError, match="the model's tokenizer"):
            read_token_stream(prefix, tokenizer)
    assert build(sp_data, tmp_path, sp1)["train"] is not None


def test_dataset_without_a_sidecar_still_loads(single_rank_world, corpus, tmp_path):
    _, prefix = corpus
    older = copy_dataset(prefix, str(tmp_path / "older"))
    (tmp_path / f"older{SIDECAR_SUFFIX}").unlink()
    sources = build(older, tmp_path)
    again = build(prefix, tmp_path / "b")
    assert (sources["train"].sample(3) == again["train"].sample(3)).all()


def test_damaged_sidecar_is_one_line(single_rank_world, corpus, tmp_path):
    _, prefix = corpus
    damaged = copy_dataset(prefix, str(tmp_path / "s"))
    (tmp_path / f"s{SIDECAR_SUFFIX}").write_text("{not json")
    with pytest.raises(DatasetError) as excinfo:
        build(damaged, tmp_path)
    one_line_error(excinfo, damaged + SIDECAR_SUFFIX)

"""The file-free tokenizer and corpus are what the quickstart stands on, so they
must round-trip exactly and be reproducible from a seed."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_mdm.data.byte_tokenizer import ByteTokenizer
from megatron_mdm.data.synthetic_corpus import generate_corpus, write_corpus

TOK = ByteTokenizer()


def test_ids_and_name():
    assert TOK.name == "byte"
    assert (TOK.bos_id, TOK.eos_id, TOK.pad_id, TOK.vocab_size) == (256, 257, 258, 259)


@pytest.mark.parametrize("text", ["", "hello world", "naïve café — 日本語 🙂", "a\nb\tc\x00"])
def test_round_trip(text):
    ids = TOK.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert len(ids) == len(text.encode("utf-8"))
    assert TOK.decode(ids) == text


def test_decode_accepts_numpy():
    ids = np.array(TOK.encode("héllo"), dtype=np.int64)
    assert TOK.decode(ids) == "héllo"


def test_specials_skipped():
    ids = [TOK.bos_id, *TOK.encode("ab"), TOK.eos_id, *TOK.encode("c"), TOK.pad_id, TOK.pad_id]
    assert TOK.decode(ids) == "abc"


def test_mask_rendering():
    mask_id = TOK.vocab_size  # the model appends [MASK] after the vocabulary
    ids = [*TOK.encode("é"), mask_id, *TOK.encode("b"), mask_id]
    assert TOK.decode(ids) == "éb"
    assert TOK.decode(ids, mask_token="_") == "é_b_"


def test_invalid_utf8_is_replaced_not_raised():
    assert TOK.decode([0xFF, ord("a")]) == "\ufffda"


def test_negative_id_rejected():
    with pytest.raises(ValueError):
        TOK.decode([-1])


def test_corpus_deterministic_and_seed_dependent():
    a = generate_corpus(50, seed=1)
    assert a == generate_corpus(50, seed=1)
    assert a != generate_corpus(50, seed=2)


def test_corpus_shape():
    docs = generate_corpus(300, seed=0)
    assert len(docs) == 300
    assert generate_corpus(0) == []
    for doc in docs:
        assert doc and "\n" not in doc and doc.isascii()
        n_sentences = doc.count(".") + doc.count("?")  # quoted speech ends its sentence
        assert 2 <= n_sentences <= 6, doc
        assert 20 < len(doc) < 1200
    text = " ".join(docs)
    assert "?" in text and '"' in text and ": " in text
    # Small vocabulary: that is what makes it learnable quickly.
    words = {w.strip('.,?:"').lower() for w in text.split()}
    assert 100 < len(words) < 400


def test_write_corpus_atomic(tmp_path):
    target = tmp_path / "sub" / "corpus.txt"
    out = write_corpus(target, num_documents=20, seed=3)
    assert out == target and target.exists()
    lines = target.read_text(encoding="utf-8").splitlines()
    assert lines == generate_corpus(20, seed=3)
    assert [p.name for p in target.parent.iterdir()] == ["corpus.txt"]
    write_corpus(target, num_documents=5, seed=3)  # overwrite in place
    assert len(target.read_text(encoding="utf-8").splitlines()) == 5
    assert not list(target.parent.glob("*.tmp"))

"""Tokenizer interface: byte, sentencepiece and Hugging Face tokenizers built locally (no hub)."""

from __future__ import annotations

import pickle

import pytest

from megatron_mdm.config import ConfigError
from megatron_mdm.data.sentencepiece_training import train_sentencepiece
from megatron_mdm.data.synthetic_corpus import generate_corpus, write_corpus
from megatron_mdm.data.tokenizers import Tokenizer, build_tokenizer

TEXTS = ["The old king slept.", 'A fox said: "Is the moon red?"', "line one\nline\ttwo"]


def make_hf_json(path, with_eos: bool = True):
    """A tiny byte-level BPE trained with the `tokenizers` library, saved as tokenizer.json."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<pad>"] if with_eos else ["<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(generate_corpus(300, seed=1), trainer)
    tok.save(str(path))
    return tok


def make_hf_folder(path, json_path):
    """A transformers tokenizer folder (save_pretrained) around the tokenizer.json."""
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=RustTokenizer.from_file(str(json_path)),
        eos_token="<|endoftext|>",
        pad_token="<pad>",
    )
    fast.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    corpus = write_corpus(d / "corpus.txt", num_documents=300, seed=1)
    return train_sentencepiece([str(corpus)], str(d / "tok"), vocab_size=200)


@pytest.fixture(scope="module")
def hf_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    make_hf_json(path)
    return path


def test_byte_tokenizer_interface():
    tok = build_tokenizer("byte", None)
    assert isinstance(tok, Tokenizer)
    assert (tok.name, tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (
        "byte",
        259,
        256,
        257,
        258,
    )
    assert tok.files() == []
    assert tok.decode(tok.encode(TEXTS[1]) + [tok.eos_id]) == TEXTS[1]
    assert pickle.loads(pickle.dumps(tok)).encode("é") == [0xC3, 0xA9]


def test_train_sentencepiece_ids_and_atomic_files(sp_model):
    assert sp_model.name == "tok.model" and sp_model.is_file()
    assert sp_model.with_suffix(".vocab").is_file()
    assert sorted(p.name for p in sp_model.parent.iterdir()) == [
        "corpus.txt",
        "tok.model",
        "tok.vocab",
    ]
    tok = build_tokenizer("sentencepiece", str(sp_model))
    assert isinstance(tok, Tokenizer)
    assert (tok.name, tok.vocab_size) == ("sentencepiece", 200)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
    assert tok.files() == [sp_model]


def test_sentencepiece_encode_decode(sp_model):
    tok = build_tokenizer("sentencepiece", str(sp_model))
    for text in [*TEXTS, *generate_corpus(5, seed=7)]:
        ids = tok.encode(text)
        assert ids and all(0 <= i < tok.vocab_size for i in ids)
        assert tok.bos_id not in ids and tok.eos_id not in ids  # no specials added
        assert tok.decode(ids) == text  # identity normalisation keeps spaces, newline, tab
    ids = tok.encode("the king")
    mask = tok.vocab_size  # the model's [MASK] id lies past the tokenizer's vocabulary
    assert tok.decode([tok.bos_id, *ids, mask, tok.eos_id, tok.pad_id]) == "the king"
    assert tok.decode([*ids, mask], mask_token="[M]") == "the king[M]"
    again = pickle.loads(pickle.dumps(tok))
    assert again.encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_train_sentencepiece_failure_is_one_line_and_leaves_nothing(tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", num_documents=20)
    with pytest.raises(ValueError, match="Vocabulary size too high") as info:
        train_sentencepiece([str(corpus)], str(tmp_path / "out" / "tok"), vocab_size=50000)
    assert "\n" not in str(info.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_train_sentencepiece_reports_bad_input_line(tmp_path):
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "a b"}\n{"text": "c"}\n{oops\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:3: invalid JSON"):
        train_sentencepiece([str(bad)], str(tmp_path / "tok"), vocab_size=50)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


def test_sentencepiece_without_eos_is_rejected(tmp_path):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(generate_corpus(100)),
        model_prefix=str(tmp_path / "noeos"),
        vocab_size=100,
        eos_id=-1,
        minloglevel=2,
    )
    with pytest.raises(ConfigError, match=r"data\.tokenizer\.model: .*noeos\.model: .*no EOS"):
        build_tokenizer("sentencepiece", str(tmp_path / "noeos.model"))


def test_hf_tokenizer_json(hf_json):
    from tokenizers import Tokenizer as RustTokenizer

    tok = build_tokenizer("hf", str(hf_json))
    rust = RustTokenizer.from_file(str(hf_json))
    assert isinstance(tok, Tokenizer)
    assert (tok.name, tok.vocab_size) == ("hf", 300)
    assert tok.eos_id == rust.token_to_id("<|endoftext|>")
    assert tok.bos_id == tok.eos_id  # no BOS token: falls back to EOS (GPT-2 convention)
    assert tok.pad_id == rust.token_to_id("<pad>")
    assert tok.files() == [hf_json]
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == rust.encode(text, add_special_tokens=False).ids
        assert tok.decode([*ids, tok.eos_id, tok.vocab_size]) == text
    assert pickle.loads(pickle.dumps(tok)).encode(TEXTS[0]) == tok.encode(TEXTS[0])


def test_hf_tokenizer_json_without_eos_is_rejected(tmp_path):
    make_hf_json(tmp_path / "tokenizer.json", with_eos=False)
    with pytest.raises(ConfigError, match=r"data\.tokenizer\.model: .*tokenizer\.json: .*no EOS"):
        build_tokenizer("hf", str(tmp_path / "tokenizer.json"))


def test_hf_transformers_folder(tmp_path, hf_json):
    folder = make_hf_folder(tmp_path / "hf_tok", hf_json)
    tok = build_tokenizer("hf", str(folder))
    direct = build_tokenizer("hf", str(hf_json))
    assert (tok.name, tok.vocab_size) == ("hf", 300)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (direct.bos_id, direct.eos_id, direct.pad_id)
    names = {p.name for p in tok.files()}
    assert {"tokenizer.json", "tokenizer_config.json"} <= names
    assert all(p.parent == folder for p in tok.files())
    for text in TEXTS:
        assert tok.encode(text) == direct.encode(text)
        assert tok.decode(tok.encode(text)) == text
    # tokenizer.json inside such a folder takes the specials from its tokenizer_config.json
    inner = build_tokenizer("hf", str(folder / "tokenizer.json"))
    assert (inner.eos_id, inner.pad_id) == (tok.eos_id, tok.pad_id)
    assert folder / "tokenizer_config.json" in inner.files()


@pytest.mark.parametrize(
    ("kind", "model", "pattern"),
    [
        ("wordpiece", None, r"^data\.tokenizer\.type: unknown tokenizer type 'wordpiece'"),
        ("sentencepiece", None, r"^data\.tokenizer\.model: required for tokenizer type"),
        ("hf", "", r"^data\.tokenizer\.model: required for tokenizer type hf"),
        (
            "sentencepiece",
            "{d}/missing.model",
            r"^data\.tokenizer\.model: .*missing\.model: no such",
        ),
        ("hf", "{d}/missing", r"^data\.tokenizer\.model: .*missing: no such file"),
        ("sentencepiece", "{d}/garbage.bin", r"garbage\.bin: not a readable sentencepiece model"),
        ("sentencepiece", "{d}", r"expected a sentencepiece \.model file"),
        ("hf", "{d}/garbage.bin", r"garbage\.bin: not a readable tokenizer\.json"),
        ("hf", "{d}", r"folder has no tokenizer files"),
    ],
)
def test_build_tokenizer_errors_are_one_line(tmp_path, kind, model, pattern):
    (tmp_path / "garbage.bin").write_bytes(b"\x00\xffnot a model")
    model = model.format(d=tmp_path) if model else model
    with pytest.raises(ConfigError, match=pattern) as info:
        build_tokenizer(kind, model)
    assert "\n" not in str(info.value)

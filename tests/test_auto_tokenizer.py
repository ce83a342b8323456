"""Every export's tokenizer loads with stock `AutoTokenizer.from_pretrained(folder)` and encodes
and decodes like ours (docs/design.md §13.2): byte, sentencepiece, HF folder and bare
tokenizer.json, written by `folder_io.write_tokenizer` (what `mdm convert export` calls)."""

from __future__ import annotations

import pytest

from megatron_mdm.checkpointing import folder_io
from megatron_mdm.data.sentencepiece_training import train_sentencepiece
from megatron_mdm.data.synthetic_corpus import generate_corpus, write_corpus
from megatron_mdm.data.tokenizers import build_tokenizer

TEXTS = generate_corpus(40, seed=7) + ["The old king slept.", 'A fox said: "Is the moon red?"']


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tok")
    corpus = write_corpus(d / "corpus.txt", num_documents=300, seed=1)
    sp = train_sentencepiece([str(corpus)], str(d / "sp"), vocab_size=200)
    rust = Tokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rust.train_from_iterator(generate_corpus(300, seed=1), trainer)
    (d / "bare").mkdir()
    rust.save(str(d / "bare" / "tokenizer.json"))
    fast = PreTrainedTokenizerFast(tokenizer_object=rust, eos_token="<|endoftext|>")
    fast.save_pretrained(str(d / "folder"))
    return {
        "byte": None,
        "sentencepiece": str(sp),
        "hf": str(d / "folder"),
        "hf-json": str(d / "bare" / "tokenizer.json"),
    }


@pytest.mark.parametrize("kind", ["byte", "sentencepiece", "hf", "hf-json"])
def test_auto_tokenizer_round_trip(kind, sources, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    typ = kind.split("-")[0]
    ours = build_tokenizer(typ, sources[kind])
    mask_id = ours.vocab_size if typ == "byte" else None
    folder_io.write_tokenizer(tmp_path, {"type": typ, "model": sources[kind]}, mask_id=mask_id)
    theirs = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in TEXTS:
        ids = ours.encode(text)
        assert theirs.encode(text, add_special_tokens=False) == ids, text
        assert theirs.decode(ids, skip_special_tokens=True) == ours.decode(ids), text
    assert theirs.eos_token_id == ours.eos_id
    if typ == "byte":  # [MASK] and EOS are special tokens at our ids
        assert theirs.mask_token_id == mask_id == 259
        assert theirs.convert_ids_to_tokens([256, 257, 258]) == ["<|bos|>", "<|eos|>", "<|pad|>"]
        assert theirs.decode([104, 105, 257, 259], skip_special_tokens=True) == "hi"
        assert theirs.encode("é", add_special_tokens=False) == list("é".encode())
    # Our own loader still reads the folder (mdm_tokenizer.json).
    again = folder_io.read_tokenizer(tmp_path)
    assert build_tokenizer(again["type"], again["model"]).encode(TEXTS[0]) == ours.encode(TEXTS[0])

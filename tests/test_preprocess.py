"""Preprocessing into megatron-core indexed datasets: content, formats, workers, errors, atomicity."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from megatron_mdm.data.preprocess import (
    add_preprocess_arguments,
    preprocess,
    run_preprocess_args,
)
from megatron_mdm.data.readers import PreprocessError, iter_documents
from megatron_mdm.data.sentencepiece_training import (
    add_tokenizer_train_arguments,
    run_tokenizer_train_args,
    train_sentencepiece,
)
from megatron_mdm.data.synthetic_corpus import generate_corpus
from megatron_mdm.data.tokenizers import build_tokenizer

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
DOCS = generate_corpus(120, seed=3) + ["naïve café — ünïcode ✓", "tabs\tand  double  spaces"]


def read_back(prefix) -> list[list[int]]:
    """Documents of an indexed dataset through megatron-core's own reader."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(prefix))
    # One sequence per document.
    assert ds.document_indices.tolist() == list(range(len(ds) + 1))
    return [ds[i].tolist() for i in range(len(ds))]


def expected(tok, docs) -> list[list[int]]:
    return [tok.encode(d) + [tok.eos_id] for d in docs]


def write_text(path, docs, blank_every: int = 0) -> int:
    """One document per line; a blank line after every `blank_every` documents. Returns blanks."""
    blanks = 0
    with open(path, "w", encoding="utf-8") as f:
        for i, doc in enumerate(docs, 1):
            f.write(doc + "\n")
            if blank_every and i % blank_every == 0:
                f.write("   \n" if blanks % 2 else "\n")
                blanks += 1
    return blanks


def write_jsonl(path, docs, key: str = "text") -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({"id": i, key: doc}) + "\n")


def outputs(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """byte, sentencepiece (vocab 200), HF tokenizer.json and a transformers folder, all local."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tok")
    corpus = d / "corpus.txt"
    write_text(corpus, generate_corpus(300, seed=1))
    sp = train_sentencepiece([str(corpus)], str(d / "sp"), vocab_size=200)

    rust = RustTokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rust.train_from_iterator(generate_corpus(300, seed=1), trainer)
    rust.save(str(d / "tokenizer.json"))
    fast = PreTrainedTokenizerFast(tokenizer_object=rust, eos_token="<|endoftext|>")
    fast.save_pretrained(str(d / "hf_folder"))
    return {
        "byte": ("byte", None),
        "sentencepiece": ("sentencepiece", str(sp)),
        "hf-json": ("hf", str(d / "tokenizer.json")),
        "hf-folder": ("hf", str(d / "hf_folder")),
    }


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
@pytest.mark.parametrize("kind", ["byte", "sentencepiece", "hf-json", "hf-folder"])
def test_round_trip_through_indexed_dataset(tmp_path, tokenizers, kind, fmt):
    tok = build_tokenizer(*tokenizers[kind])
    if fmt == "text":
        src = tmp_path / "corpus.txt"
        blanks = write_text(src, DOCS, blank_every=25)
    else:
        src = tmp_path / "corpus.jsonl"
        write_jsonl(src, DOCS)
        blanks = 0
    summary = preprocess([str(src)], str(tmp_path / "out" / "data"), tok, progress=False)
    want = expected(tok, DOCS)
    assert read_back(tmp_path / "out" / "data") == want
    assert summary["documents"] == len(DOCS)
    assert summary["tokens"] == sum(map(len, want))
    assert summary["empty_skipped"] == blanks
    assert summary["dtype"] == "uint16"
    assert outputs(tmp_path / "out") == ["data.bin", "data.idx", "data.tokenizer.json"]


def test_workers_give_identical_output(tmp_path, tokenizers):
    tok = build_tokenizer(*tokenizers["sentencepiece"])
    src = tmp_path / "corpus.txt"
    docs = generate_corpus(1500, seed=5)  # several chunks per worker
    write_text(src, docs, blank_every=100)
    s1 = preprocess([str(src)], str(tmp_path / "w1"), tok, workers=1, progress=False)
    s2 = preprocess([str(src)], str(tmp_path / "w2"), tok, workers=2, progress=False)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"w1{ext}").read_bytes() == (tmp_path / f"w2{ext}").read_bytes()
    assert (s1["documents"], s1["tokens"], s1["empty_skipped"]) == (
        s2["documents"],
        s2["tokens"],
        s2["empty_skipped"],
    )
    assert read_back(tmp_path / "w2") == expected(tok, docs)


def test_parquet_input_in_row_groups(tmp_path, tokenizers):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tok = build_tokenizer(*tokenizers["hf-json"])
    docs = generate_corpus(50, seed=2)
    texts = docs[:20] + [""] + docs[20:] + [None]
    table = pa.table({"id": list(range(len(texts))), "content": texts})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=7)
    summary = preprocess(
        [str(tmp_path / "c.parquet")], str(tmp_path / "p"), tok, json_key="content", progress=False
    )
    assert read_back(tmp_path / "p") == expected(tok, docs)
    assert summary["empty_skipped"] == 2


def test_datasets_save_to_disk(tmp_path, tokenizers):
    import datasets

    tok = build_tokenizer(*tokenizers["sentencepiece"])
    train, test = generate_corpus(40, seed=8), generate_corpus(10, seed=9)
    datasets.Dataset.from_dict({"text": train, "n": list(range(40))}).save_to_disk(
        str(tmp_path / "ds")
    )
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": train}),
            "test": datasets.Dataset.from_dict({"text": test}),
        }
    ).save_to_disk(str(tmp_path / "dd"))
    preprocess([str(tmp_path / "ds")], str(tmp_path / "a"), tok, progress=False)
    assert read_back(tmp_path / "a") == expected(tok, train)
    preprocess([str(tmp_path / "dd")], str(tmp_path / "b"), tok, hf_split="test", progress=False)
    assert read_back(tmp_path / "b") == expected(tok, test)
    with pytest.raises(PreprocessError, match=r"dd: no split 'valid' \(splits: 'train', 'test'\)"):
        preprocess([str(tmp_path / "dd")], str(tmp_path / "c"), tok, hf_split="valid")


def test_mixed_inputs_keep_order(tmp_path, tokenizers):
    tok = build_tokenizer(*tokenizers["byte"])
    a, b = generate_corpus(30, seed=10), generate_corpus(30, seed=11)
    write_text(tmp_path / "a.txt", a)
    write_jsonl(tmp_path / "b.jsonl", b)
    paths = [str(tmp_path / "b.jsonl"), str(tmp_path / "a.txt")]
    preprocess(paths, str(tmp_path / "o"), tok, workers=2, progress=False)
    assert read_back(tmp_path / "o") == expected(tok, b + a)
    assert list(iter_documents(paths[1])) == a


def test_split_documents_none(tmp_path, tokenizers):
    tok = build_tokenizer(*tokenizers["sentencepiece"])
    first = "First file, line one.\n\nline three after a blank line.\n"
    second = "Second file\twithout a final newline"
    (tmp_path / "1.txt").write_text(first)
    (tmp_path / "2.txt").write_text(second)
    inputs = [str(tmp_path / "1.txt"), str(tmp_path / "2.txt")]
    summary = preprocess(inputs, str(tmp_path / "o"), tok, split_documents="none", progress=False)
    assert read_back(tmp_path / "o") == expected(tok, [first.rstrip("\n"), second])
    assert (summary["documents"], summary["empty_skipped"]) == (2, 0)


def test_documents_modes(tmp_path, tokenizers):
    """--documents line | blank-line | whole-file | jsonl, each against the documents written
    here; `none` is the older name of whole-file."""
    tok = build_tokenizer(*tokenizers["byte"])
    text = "Para one, line one.\nPara one, line two.\n\n  \nPara two.\r\n\nPara three\n\n"
    (tmp_path / "p.txt").write_text(text, newline="")
    paragraphs = ["Para one, line one.\nPara one, line two.", "Para two.", "Para three"]
    lines = ["Para one, line one.", "Para one, line two.", "Para two.", "Para three"]
    cases = {"blank-line": paragraphs, "line": lines, "whole-file": [text.rstrip("\n")]}
    cases["none"] = cases["whole-file"]
    for mode, docs in cases.items():
        preprocess(
            [str(tmp_path / "p.txt")],
            str(tmp_path / mode),
            tok,
            split_documents=mode,
            progress=False,
        )
        assert read_back(tmp_path / mode) == expected(tok, docs), mode
        assert list(iter_documents(str(tmp_path / "p.txt"), split_documents=mode)) == docs
    # jsonl: JSON lines whatever the suffix (by suffix, a .txt is plain text).
    write_jsonl(tmp_path / "records.txt", DOCS[:5])
    preprocess(
        [str(tmp_path / "records.txt")],
        str(tmp_path / "j"),
        tok,
        split_documents="jsonl",
        progress=False,
    )
    assert read_back(tmp_path / "j") == expected(tok, DOCS[:5])


def test_documents_flag_and_the_older_split_documents_flag(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a\nb\n\nc\n")
    base = ["--input", str(tmp_path / "p.txt"), "--tokenizer-type", "byte", "--no-progress"]
    for flags, docs in (
        ([], ["a", "b", "c"]),
        (["--documents", "blank-line"], ["a\nb", "c"]),
        (["--split-documents", "none"], ["a\nb\n\nc"]),
        (["--split-documents", "line", "--documents", "line"], ["a", "b", "c"]),
    ):
        prefix = tmp_path / f"o{len(flags)}"
        args = parse(add_preprocess_arguments, [*base, "--output-prefix", str(prefix), *flags])
        assert run_preprocess_args(args) == 0
        assert read_back(prefix) == [list(d.encode()) + [257] for d in docs], flags
    both = ["--documents", "blank-line", "--split-documents", "none"]
    args = parse(add_preprocess_arguments, [*base, "--output-prefix", str(tmp_path / "x"), *both])
    assert run_preprocess_args(args) == 2
    assert "--documents blank-line and --split-documents none disagree" in capsys.readouterr().err


def test_large_vocab_uses_int32(tmp_path):
    class WideTokenizer:
        """Ids above the uint16 range, to check the index dtype follows the vocabulary."""

        name, vocab_size, bos_id, eos_id, pad_id = "wide", 70000, 69998, 69999, 69999

        def encode(self, text):
            return [65536 + ord(c) % 1000 for c in text]

    (tmp_path / "c.txt").write_text("ab\ncd\n")
    summary = preprocess(
        [str(tmp_path / "c.txt")], str(tmp_path / "o"), WideTokenizer(), progress=False
    )
    assert summary["dtype"] == "int32"
    assert read_back(tmp_path / "o") == [
        [65536 + 97, 65536 + 98, 69999],
        [65536 + 99, 65536 + 100, 69999],
    ]


def test_progress_and_summary(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("hello\n\nworld\n")
    summary = preprocess([str(tmp_path / "c.txt")], str(tmp_path / "o"), build_tokenizer("byte"))
    out = capsys.readouterr().out
    assert "2 documents, 12 tokens (1 empty skipped)" in out
    assert "tokens/s" in out and "MB/s" in out
    assert {"documents", "tokens", "seconds", "tokens_per_s", "mb_per_s"} <= set(summary)


BAD_INPUTS = {
    "missing": (None, r"^{p}: no such file or directory$"),
    "empty.txt": (b"", r"^{p}: no documents \(empty file\)$"),
    "blank.txt": (b"\n  \n\n", r"^{p}: no documents \(only empty lines or empty texts\)$"),
    "utf8.txt": (b"good line\nbad \xff byte\n", r"^{p}:2: invalid UTF-8 at byte 4 of the line"),
    "empty.jsonl": (b"", r"^{p}: no documents \(empty file\)$"),
    "json.jsonl": (b'{"text": "a"}\n\n{"text": "b",}\n', r"^{p}:3: invalid JSON \("),
    "key.jsonl": (
        b'{"text": "a"}\n{"body": "b", "id": 2}\n',
        r"^{p}:2: no key 'text' \(keys: 'body', 'id'\)$",
    ),
    "type.jsonl": (b'{"text": ["a"]}\n', r"^{p}:1: 'text' is list, expected a string$"),
    "array.jsonl": (b'["a"]\n', r"^{p}:1: expected a JSON object, found list$"),
    "utf8.jsonl": (b'{"text": "a"}\n{"text": "\xc3("}\n', r"^{p}:2: invalid UTF-8"),
    "bad.parquet": (b"PAR1 not really", r"^{p}: not a readable parquet file"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_error_naming_file(tmp_path, name):
    content, pattern = BAD_INPUTS[name]
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(
        PreprocessError, match=pattern.format(p=__import__("re").escape(str(path)))
    ) as info:
        preprocess(
            [str(path)], str(tmp_path / "out" / "o"), build_tokenizer("byte"), progress=False
        )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() or outputs(tmp_path / "out") == []


def test_parquet_without_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a"], "id": [1]}), tmp_path / "c.parquet")
    with pytest.raises(
        PreprocessError, match=r"c\.parquet: no column 'text' \(columns: 'body', 'id'\)$"
    ):
        preprocess([str(tmp_path / "c.parquet")], str(tmp_path / "o"), build_tokenizer("byte"))


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_late_in_run_leaves_no_output(tmp_path, tokenizers, workers):
    tok = build_tokenizer(*tokenizers["sentencepiece"])
    write_text(tmp_path / "a.txt", generate_corpus(1200, seed=4))
    docs = generate_corpus(300, seed=6)
    write_jsonl(tmp_path / "b.jsonl", docs)
    with open(tmp_path / "b.jsonl", "a") as f:
        f.write('{"text": "fine"}\n{"txt": "typo near the end"}\n{"text": "never read"}\n')
    out = tmp_path / "out"
    with pytest.raises(PreprocessError, match=r"b\.jsonl:302: no key 'text' \(keys: 'txt'\)"):
        preprocess(
            [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")],
            str(out / "data"),
            tok,
            workers=workers,
            progress=False,
        )
    assert outputs(out) == []  # neither PREFIX.bin/.idx nor temp files


def test_failure_keeps_previous_output_and_interrupt_cleans_up(tmp_path):
    tok = build_tokenizer("byte")
    (tmp_path / "c.txt").write_text("one\ntwo\nthree\n")
    prefix = str(tmp_path / "out" / "data")
    preprocess([str(tmp_path / "c.txt")], prefix, tok, progress=False)
    before = {n: (tmp_path / "out" / n).read_bytes() for n in outputs(tmp_path / "out")}

    class Interrupting:
        name, vocab_size, bos_id, eos_id, pad_id = "byte", 259, 256, 257, 258

        def encode(self, text):
            if text == "three":
                raise KeyboardInterrupt
            return list(text.encode())

    with pytest.raises(KeyboardInterrupt):
        preprocess([str(tmp_path / "c.txt")], prefix, Interrupting(), progress=False)
    assert {n: (tmp_path / "out" / n).read_bytes() for n in outputs(tmp_path / "out")} == before


def test_invalid_options():
    tok = build_tokenizer("byte")
    with pytest.raises(PreprocessError, match="split_documents='para'"):
        preprocess(["x.txt"], "o", tok, split_documents="para")
    with pytest.raises(PreprocessError, match="workers=0"):
        preprocess(["x.txt"], "o", tok, workers=0)
    with pytest.raises(PreprocessError, match="no inputs"):
        preprocess([], "o", tok)


def parse(add, argv):
    return add(argparse.ArgumentParser()).parse_args(argv)


def test_cli_functions(tmp_path, capsys, tokenizers):
    write_jsonl(tmp_path / "c.jsonl", DOCS, key="body")
    args = [
        "--input", str(tmp_path / "c.jsonl"),
        "--output-prefix", str(tmp_path / "o"),
        "--tokenizer-type", "sentencepiece",
        "--tokenizer-model", tokenizers["sentencepiece"][1],
        "--json-key", "body",
        "--workers", "1",
    ]  # fmt: skip
    assert run_preprocess_args(parse(add_preprocess_arguments, args)) == 0
    assert read_back(tmp_path / "o") == expected(
        build_tokenizer(*tokenizers["sentencepiece"]), DOCS
    )
    capsys.readouterr()

    assert run_preprocess_args(parse(add_preprocess_arguments, args[:-4])) == 2  # key 'text'
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert err.startswith("mdm preprocess: error: ")
    assert "c.jsonl:1: no key 'text'" in err

    bad_model = [*args[:6], "--tokenizer-model", str(tmp_path / "none.model")]
    assert run_preprocess_args(parse(add_preprocess_arguments, bad_model)) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"mdm preprocess: error: data.tokenizer.model: {tmp_path / 'none.model'}: no such file or directory\n"
    )

    (tmp_path / "t.txt").write_text("\n".join(generate_corpus(200)) + "\n")
    train = [
        "--input",
        str(tmp_path / "t.txt"),
        "--model-prefix",
        str(tmp_path / "tk" / "m"),
        "--vocab-size",
        "150",
    ]
    assert run_tokenizer_train_args(parse(add_tokenizer_train_arguments, train)) == 0
    assert build_tokenizer("sentencepiece", str(tmp_path / "tk" / "m.model")).vocab_size == 150
    train[-1] = "100000"
    assert run_tokenizer_train_args(parse(add_tokenizer_train_arguments, train)) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("mdm tokenizer train: error: sentencepiece training failed")


def test_tools_script(tmp_path):
    (tmp_path / "c.txt").write_text("hello\nworld\n")
    cmd = [
        sys.executable, str(ROOT / "tools" / "preprocess_data.py"),
        "--input", str(tmp_path / "c.txt"), "--output-prefix", str(tmp_path / "o"),
        "--tokenizer-type", "byte", "--workers", "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "2 documents, 12 tokens" in proc.stdout
    assert read_back(tmp_path / "o") == [list(b"hello") + [257], list(b"world") + [257]]
    proc = subprocess.run(
        cmd[:3] + [str(tmp_path / "nope.txt")] + cmd[4:], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert (
        proc.stderr
        == f"mdm preprocess: error: {tmp_path / 'nope.txt'}: no such file or directory\n"
    )

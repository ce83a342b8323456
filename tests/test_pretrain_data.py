"""Pretraining data through megatron-core: blends, splits, and the on-the-fly quickstart dataset."""

from __future__ import annotations

import signal

import pytest

from megatron_mdm.config import ConfigError, load_config
from megatron_mdm.data.preprocess import preprocess
from megatron_mdm.data.pretrain_dataset import build_sample_sources
from megatron_mdm.data.tokenizers import build_tokenizer


@pytest.fixture
def two_corpora(tmp_path):
    """Corpus A uses only the letter a, corpus B only b: a sample's first byte names its source."""
    tok = build_tokenizer("byte", None)
    prefixes = {}
    for letter in "ab":
        text = tmp_path / f"{letter}.txt"
        text.write_text("".join(letter * (20 + i % 7) + "\n" for i in range(400)))
        prefix = str(tmp_path / f"corpus_{letter}")
        preprocess([str(text)], prefix, tok, progress=False)
        prefixes[letter] = prefix
    return tok, prefixes


def test_blend_weights_are_respected(single_rank_world, two_corpora, tmp_path):
    tok, prefixes = two_corpora
    cfg = load_config(
        None,
        [
            "model.seq_length=16",
            "train.global_batch_size=8",
            "train.micro_batch_size=8",
            "train.max_steps=250",
            "data.split=100,0,0",
        ],
    )
    blend = [0.25, prefixes["a"], 0.75, prefixes["b"]]
    sources = build_sample_sources(cfg, tok, blend, tmp_path / "cache")
    train = sources["train"]
    assert len(train) >= 2000 and sources["valid"] is None
    from_a = 0
    for i in range(2000):
        first_byte = next(int(x) for x in train.sample(i) if x != tok.eos_id)
        from_a += first_byte == ord("a")
    assert abs(from_a / 2000 - 0.25) < 0.02


def test_splits_and_sample_shape(single_rank_world, two_corpora, tmp_path):
    tok, prefixes = two_corpora
    cfg = load_config(
        None,
        [
            "model.seq_length=16",
            "train.global_batch_size=4",
            "train.micro_batch_size=4",
            "train.max_steps=10",
            "train.eval_interval=5",
            "train.eval_iters=2",
            "data.split=90,10,0",
        ],
    )
    sources = build_sample_sources(cfg, tok, [prefixes["a"]], tmp_path / "cache")
    assert sources["valid"] is not None and len(sources["valid"]) >= 8
    assert sources["test"] is None
    sample = sources["train"].sample(3)
    assert sample.shape == (17,) and set(sample.tolist()) <= {ord("a"), tok.eos_id}
    # A sample is a pure function of its index: rebuilding (as a resumed run does) reproduces it.
    again = build_sample_sources(cfg, tok, [prefixes["a"]], tmp_path / "cache")
    assert (again["train"].sample(3) == sample).all()


def test_missing_prefix_is_a_config_error(single_rank_world, tmp_path):
    cfg = load_config(None, ["model.seq_length=16"])
    tok = build_tokenizer("byte", None)
    with pytest.raises(ConfigError, match="data.blend.*nope.bin does not exist"):
        build_sample_sources(cfg, tok, [1.0, str(tmp_path / "nope")], tmp_path / "cache")


def test_empty_valid_split_with_eval_is_a_config_error(single_rank_world, two_corpora, tmp_path):
    tok, prefixes = two_corpora
    cfg = load_config(
        None,
        [
            "model.seq_length=16",
            "train.eval_interval=5",
            "train.eval_iters=1",
            "data.split=100,0,0",
        ],
    )
    with pytest.raises(ConfigError, match="data.split"):
        build_sample_sources(cfg, tok, [prefixes["a"]], tmp_path / "cache")


@pytest.fixture
def hang_guard():
    """Turn a hang into a failure: megatron's epoch loop on an empty split never returns."""

    def on_alarm(signum, frame):
        raise TimeoutError("building the splits hung")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_tiny_file_with_default_split_builds(single_rank_world, two_corpora, tmp_path, hang_guard):
    # 400 documents with the default split 969,30,1: the test share rounds to 0 documents.
    tok, prefixes = two_corpora
    cfg = load_config(
        None,
        [
            "model.seq_length=16",
            "train.global_batch_size=4",
            "train.micro_batch_size=4",
            "train.max_steps=3",
            "train.eval_interval=2",
            "train.eval_iters=1",
        ],
    )
    assert cfg.data.split == "969,30,1"
    sources = build_sample_sources(cfg, tok, [prefixes["a"]], tmp_path / "cache")
    assert sources["test"] is None
    assert len(sources["train"]) >= 12 and len(sources["valid"]) >= 4


def test_read_split_without_tokens_is_a_config_error(
    single_rank_world, two_corpora, tmp_path, hang_guard
):
    # The valid share of 400 documents at 999,1,0 is round(399.6) to 400: no document.
    tok, prefixes = two_corpora
    cfg = load_config(
        None,
        [
            "model.seq_length=16",
            "train.eval_interval=5",
            "train.eval_iters=1",
            "data.split=999,1,0",
        ],
    )
    with pytest.raises(ConfigError, match=r"data\.split: the valid split .*corpus_a\.bin has 0 of"):
        build_sample_sources(cfg, tok, [prefixes["a"]], tmp_path / "cache")


def test_prefixes_alone_weigh_by_their_token_counts(single_rank_world, tmp_path):
    """`data.blend: [prefix, ...]` without weights: mixed as if the files were one."""
    tok = build_tokenizer("byte", None)
    prefixes, tokens = [], []
    for letter, docs in (("a", 300), ("b", 900)):
        text = tmp_path / f"{letter}.txt"
        text.write_text("".join(letter * (20 + i % 7) + "\n" for i in range(docs)))
        prefix = str(tmp_path / f"corpus_{letter}")
        tokens.append(preprocess([str(text)], prefix, tok, progress=False)["tokens"])
        prefixes.append(prefix)
    overrides = [
        "model.seq_length=16",
        "train.global_batch_size=8",
        "train.micro_batch_size=8",
        "train.max_steps=250",
        "data.split=100,0,0",
    ]
    cfg = load_config(None, [*overrides, f"data.blend=[{prefixes[0]}]"])
    assert cfg.data.blend == [prefixes[0]]
    alone = build_sample_sources(cfg, tok, cfg.data.blend, tmp_path / "c1")["train"]
    weighted = build_sample_sources(cfg, tok, [1.0, prefixes[0]], tmp_path / "c2")["train"]
    assert (alone.sample(7) == weighted.sample(7)).all()  # one prefix: weight 1, same samples

    cfg = load_config(None, [*overrides, f"data.blend=[{prefixes[0]}, {prefixes[1]}]"])
    train = build_sample_sources(cfg, tok, cfg.data.blend, tmp_path / "c3")["train"]
    from_a = sum(
        next(int(x) for x in train.sample(i) if x != tok.eos_id) == ord("a") for i in range(2000)
    )
    assert abs(from_a / 2000 - tokens[0] / sum(tokens)) < 0.02

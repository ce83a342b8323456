"""`mdm eval ppl --split valid|test`: the documents a run held out, found from its checkpoint's
meta.yaml (data.blend or data.text_file, data.split) and cut where megatron-core cuts them.

In-process, no model: the token streams are compared with the documents written here, cut by
the plain formula round(cumulative share * documents). The end-to-end figures (--ckpt --split
against the export on the same documents as text) are in test_quiet_commands.py."""

from __future__ import annotations

import pytest

from megatron_mdm.cli import main as mdm_main
from megatron_mdm.config import load_config, to_dict
from megatron_mdm.data.prepare import resolve_blend
from megatron_mdm.data.preprocess import preprocess
from megatron_mdm.data.tokenizers import build_tokenizer
from megatron_mdm.eval.errors import EvalError
from megatron_mdm.eval.ppl import read_split_stream
from megatron_mdm.utils import atomic_write_text

BYTE = build_tokenizer("byte")
DOCS = [f"held-out document number {i}" + "!" * (i % 5) for i in range(53)]


def fake_run(tmp_path, overrides: list[str]):
    """A run folder whose only checkpoint file is meta.yaml (all read_split_stream reads). Its
    config names another output_dir, as for a run folder moved or read from another cwd."""
    import yaml

    run = tmp_path / "run"
    cfg = load_config(None, ["train.output_dir=runs/elsewhere", *overrides])
    meta = {"step": 1, "config": to_dict(cfg)}
    atomic_write_text(run / "checkpoints" / "step_0000001" / "meta.yaml", yaml.safe_dump(meta))
    atomic_write_text(run / "checkpoints" / "latest", "step_0000001")
    return run, cfg


def expected(docs: list[str], weights: tuple[int, int, int], split: str) -> tuple[list[int], int]:
    """Tokens and count of the documents of `split`, cut at round(cumulative share * n)."""
    n, total = len(docs), sum(weights)
    edges = [round(sum(weights[:k]) / total * n) for k in range(4)]
    k = ("train", "valid", "test").index(split)
    chosen = docs[edges[k] : edges[k + 1]]
    return [t for d in chosen for t in [*d.encode(), BYTE.eos_id]], len(chosen)


@pytest.mark.parametrize("split", ["valid", "test"])
def test_split_of_a_blend_run(tmp_path, split):
    (tmp_path / "docs.txt").write_text("\n".join(DOCS) + "\n")
    prefix = str(tmp_path / "docs")
    preprocess([str(tmp_path / "docs.txt")], prefix, BYTE, progress=False)
    run, _ = fake_run(tmp_path, [f"data.blend=[{prefix}]", "data.split=6,2,2"])
    tokens, source = read_split_stream(str(run), split, BYTE)
    want, count = expected(DOCS, (6, 2, 2), split)
    assert tokens.tolist() == want and source["documents"] == count > 0
    assert source["split"] == split and prefix in source["data"]
    tokens, _ = read_split_stream(str(run), split, BYTE, max_tokens=7)
    assert tokens.tolist() == want[:7]


def test_split_of_a_text_file_run_reads_the_runs_own_dataset(tmp_path, monkeypatch):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(DOCS) + "\n")
    run, cfg = fake_run(tmp_path, [f"data.text_file={text}", "data.split=90,7,3"])
    # What training did: preprocess into <its output_dir>/data/corpus-<hash>.
    resolve_blend(cfg, BYTE, is_builder=True, data_dir=run / "data")
    monkeypatch.chdir(tmp_path)  # no runs/elsewhere here: found through the checkpoint
    tokens, source = read_split_stream(str(run), "valid", BYTE)
    want, count = expected(DOCS, (90, 7, 3), "valid")
    assert tokens.tolist() == want and source["documents"] == count
    assert str(run / "data" / "corpus-") in source["data"]


def test_split_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "docs.txt").write_text("\n".join(DOCS) + "\n")
    prefix = str(tmp_path / "docs")
    preprocess([str(tmp_path / "docs.txt")], prefix, BYTE, progress=False)
    run, _ = fake_run(tmp_path, [f"data.blend=[{prefix}]", "data.split=10,0,0"])
    with pytest.raises(EvalError, match=r"--split valid: the run's valid split is empty"):
        read_split_stream(str(run), "valid", BYTE)
    assert mdm_main(["eval", "ppl", "--hf", str(tmp_path), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == "mdm eval ppl: error: --split test: needs --ckpt (the run's meta.yaml names its data)\n"
    )
    with pytest.raises(SystemExit):  # --data and --split exclude each other
        mdm_main(["eval", "ppl", "--ckpt", str(run), "--split", "test", "--data", prefix])

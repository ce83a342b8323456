"""`mdm convert`: export / import / reshard against independent references.

One TP=2 training run (2 gloo processes), one ZeRO-3 and one ZeRO-2 data-parallel run, and a
single-process ZeRO-0 run of the same config feed every check: their losses against each other,
bit-identical round trips, the
exported `hf` folder's logits under `transformers` against the training model's, ZeRO shards
against the ZeRO-0 weights, resharded checkpoints training on.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import QUICKSTART, read_metrics, run_mdm
from helpers import run_convert as convert
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

TRAIN = [
    "model.seq_length=64",
    "model.num_query_groups=2",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
    "train.max_steps=2",
    "train.warmup_steps=1",
    "logging.progress=false",
    "logging.tensorboard=false",
    "logging.interval=1",
]


def tensors_of(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    out = {}
    for name, extra, nproc in [
        ("ref", [], 1),
        ("tp2", ["parallel.tensor=2"], 2),
        ("zero3", ["parallel.zero_stage=3"], 2),
        ("zero2", ["parallel.zero_stage=2"], 2),
        # 4 steps with a checkpoint at step 2: the uninterrupted reference of a layout change.
        ("tp2_long", ["parallel.tensor=2", "train.max_steps=4", "checkpoint.save_interval=2"], 2),
    ]:
        out[name] = root / name
        run_mdm(["train", QUICKSTART, *TRAIN, *extra, f"train.output_dir={out[name]}"], nproc=nproc)
    out["root"] = root
    return out


@pytest.mark.parametrize("layout", ["tp2", "zero2", "zero3"])
def test_two_process_runs_reproduce_the_one_process_losses(runs, layout):
    """The parity of TP=2 and of ZeRO-2/3 at DP=2 with one ZeRO-0 process, checked on these
    runs rather than on runs of their own (test_parallel_parity covers PP, ZeRO-1 with PP,
    recomputation, variable-length crops and validation)."""
    want, got = read_metrics(runs["ref"]), read_metrics(runs[layout])
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2]
    for ref, have in zip(want, got):
        assert have["loss"] == pytest.approx(ref["loss"], rel=1e-5), (layout, ref["step"])
        assert have["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), (layout, ref)
        assert have["consumed_samples"] == ref["consumed_samples"]


@pytest.mark.parametrize("fmt", ["hf", "llada", "smdm"])
def test_round_trip_tp2_export_import_export_is_bit_identical(runs, fmt):
    root = runs["root"] / fmt
    convert("export", str(runs["tp2"]), str(root / "a"), "--format", fmt, "--dtype", "fp32")
    convert(
        "import",
        str(root / "a"),
        str(root / "ckpt"),
        "--format",
        fmt,
        "--tensor",
        "1",
        "--pipeline",
        "1",
    )
    convert("export", str(root / "ckpt"), str(root / "b"), "--format", fmt, "--dtype", "fp32")
    a, b = tensors_of(root / "a"), tensors_of(root / "b")
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_hf_export_logits_match_training_model(runs, single_rank_world, monkeypatch):
    from transformers import AutoModelForMaskedLM

    from megatron_mdm.checkpointing.run_dir import read_meta, resolve_checkpoint, vocab_from_meta
    from megatron_mdm.checkpointing.weights import canonical_weights, load_weights_into
    from megatron_mdm.config import from_dict
    from megatron_mdm.convert import layouts
    from megatron_mdm.model.builder import build_model
    from megatron_mdm.parallel.distributed import ParallelContext

    folder = runs["root"] / "logits_hf"
    convert("export", str(runs["tp2"]), str(folder), "--format", "hf", "--dtype", "fp32")
    config = json.loads((folder / "config.json").read_text())
    meta = read_meta(resolve_checkpoint(runs["tp2"]))
    assert config["mask_token_id"] == meta["vocab"]["mask_id"] == 259
    assert config["eos_token_id"] == meta["tokenizer"]["eos_id"]

    cfg = from_dict({**meta["config"], "parallel": {"tensor": 1}})
    vocab = vocab_from_meta(meta)
    vocab = type(vocab)(vocab.tokenizer_size, vocab.mask_id, vocab.padded_size)
    model = build_model(cfg, vocab, on_gpu=False).eval()
    ctx = ParallelContext(0, 1, 0, 0, 1, 0, 1, 0, 1, torch.device("cpu"), "single")
    canonical = canonical_weights(
        runs["tp2"], layouts.ModelShape.from_config(cfg.model, vocab), vocab.padded_size
    )
    load_weights_into(model, canonical, ctx, cfg.model.num_layers, "tp2")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = AutoModelForMaskedLM.from_pretrained(str(folder), trust_remote_code=True).eval()
    x = torch.randint(0, 259, (2, 64), generator=torch.Generator().manual_seed(0))
    x[:, ::5] = 259  # some [MASK] inputs
    with torch.no_grad():
        ours = model(x)[..., : config["vocab_size"]]
        theirs = hf(input_ids=x).logits
    finite = torch.isfinite(ours)
    assert torch.equal(finite, torch.isfinite(theirs))
    torch.testing.assert_close(theirs[finite], ours[finite], rtol=1e-5, atol=1e-5)


def test_zero_shards_export_the_zero0_weights(runs):
    """ZeRO-3 (weights only in the shards) and ZeRO-2 --fp32-master, each against ZeRO-0."""
    root = runs["root"]
    convert("export", str(runs["ref"]), str(root / "z0"), "--format", "hf", "--dtype", "fp32")
    convert("export", str(runs["zero3"]), str(root / "z3"), "--format", "hf", "--dtype", "fp32")
    convert(
        "export",
        str(runs["zero2"]),
        str(root / "z2"),
        "--format",
        "hf",
        "--dtype",
        "fp32",
        "--fp32-master",
    )
    ref = tensors_of(root / "z0")
    # Losses agree to 1e-5 (test_two_process_runs_reproduce_the_one_process_losses); the weights
    # after 2 AdamW steps agree to a small fraction of one step (lr 2e-3): Adam's g / (|g| + eps)
    # amplifies the reduction-order noise of near-zero gradients. A mis-read shard would be off
    # by ~init std.
    for other in ("z3", "z2"):
        got = tensors_of(root / other)
        assert set(got) == set(ref)
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], rtol=1e-4, atol=1e-4)


def test_reshard_keeps_the_weights_exactly(runs, tmp_path):
    resharded = tmp_path / "pp2"
    convert("reshard", str(runs["tp2"]), str(resharded), "--tensor", "1", "--pipeline", "2")
    convert("export", str(resharded), str(tmp_path / "a"), "--format", "hf", "--dtype", "fp32")
    convert("export", str(runs["tp2"]), str(tmp_path / "b"), "--format", "hf", "--dtype", "fp32")
    a, b = tensors_of(tmp_path / "a"), tensors_of(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Training on from it: test_layout_change_with_adam_state_continues_the_uninterrupted_run.


def test_init_from_exported_folder(runs, tmp_path):
    folder = runs["root"] / "init_llada"
    if not folder.exists():
        convert("export", str(runs["tp2"]), str(folder), "--format", "llada", "--dtype", "fp32")
    out = tmp_path / "sft"
    proc = run_mdm(
        [
            "train",
            QUICKSTART,
            *TRAIN,
            "train.max_steps=1",
            f"train.init_from={folder}",
            f"train.output_dir={out}",
        ]
    )
    assert "loaded weights from" in proc.stdout + proc.stderr
    # Same weights as the TP=2 run's step 2, so its first loss beats a fresh model's.
    fresh = read_metrics(runs["ref"])[0]["loss"]
    assert read_metrics(out)[0]["loss"] < fresh


def test_bad_inputs_are_one_line_errors_and_leave_nothing(runs, tmp_path):
    out = tmp_path / "out"
    proc = convert("export", str(tmp_path), str(out), "--format", "hf", check=False)
    assert proc.returncode == 2 and "not a checkpoint" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

    broken = tmp_path / "broken"
    shutil.copytree(runs["tp2"] / "checkpoints", broken / "checkpoints")
    tag = (broken / "checkpoints" / "latest").read_text()
    (broken / "checkpoints" / tag / "mp_rank_01_model_states.pt").unlink()
    proc = convert("export", str(broken), str(out), "--format", "smdm", check=False)
    assert proc.returncode == 2 and "mp_rank_01_model_states.pt: missing shard" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))

    proc = convert("reshard", str(runs["tp2"]), str(out), "--tensor", "3", check=False)
    assert proc.returncode == 2 and "parallel.tensor" in proc.stderr and not out.exists()

    exported = runs["root"] / "bad_src"
    convert("export", str(runs["tp2"]), str(exported), "--format", "hf", "--dtype", "fp32")
    config = json.loads((exported / "config.json").read_text())
    config["hidden_size"] *= 2  # not the tensors' width
    (exported / "config.json").write_text(json.dumps(config))
    proc = convert("import", str(exported), str(out), "--format", "hf", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "model.embed_tokens.weight" in proc.stderr or "hidden_size" in proc.stderr
    assert not out.exists()


def test_adam_state_from_zero2_shards_matches_zero0(runs):
    """ZeRO-2 at DP=2 splits parameters across ranks' flat partitions; read back into the
    canonical form they match ZeRO-0's torch optimizer state (plain per-parameter tensors)."""
    from megatron_mdm.checkpointing.adam_state import ADAM_KEYS, load_adam_state

    ref, _, _ = load_adam_state(runs["ref"])
    got, _, _ = load_adam_state(runs["zero2"])
    assert ref.step == got.step == 2
    assert set(got.master) == set(ref.master)
    for name in ref.master:  # as in test_zero_shards_export_the_zero0_weights
        torch.testing.assert_close(got.master[name], ref.master[name], rtol=1e-4, atol=1e-4)
        for key in ADAM_KEYS:
            ours, theirs = got.moments[key][name], ref.moments[key][name]
            scale = theirs.abs().max().item() + 1e-30
            assert (ours - theirs).abs().max().item() <= 1e-3 * scale, (name, key)


def test_layout_change_with_adam_state_continues_the_uninterrupted_run(runs, tmp_path):
    """TP=2 -> (reshard with Adam state) -> TP=1/PP=2 resumed at step 2, at ZeRO-0 (torch AdamW)
    and ZeRO-1 (DeepSpeed's partitions): steps 3 and 4 match the uninterrupted TP=2 run; a fresh
    optimizer (--weights-only, what reshard did before) does not match at step 4."""
    source = runs["tp2_long"] / "checkpoints" / "step_0000002"
    for kept, extra in (("adam", []), ("fresh", ["--weights-only"])):
        proc = convert(
            "reshard", str(source), str(tmp_path / kept), "--tensor", "1", "--pipeline", "2", *extra
        )
        assert ("weights and Adam state" in proc.stdout) == (kept == "adam")
    metrics = {}
    for name, kept, zero in (("zero0", "adam", 0), ("zero1", "adam", 1), ("fresh", "fresh", 0)):
        out = tmp_path / f"cont-{name}"
        proc = run_mdm(
            [
                "train",
                QUICKSTART,
                *TRAIN,
                "train.max_steps=4",
                "parallel.pipeline=2",
                f"parallel.zero_stage={zero}",
                f"checkpoint.resume={tmp_path / kept}",
                f"train.output_dir={out}",
            ],
            nproc=2,
        )
        assert "at step 2" in proc.stdout + proc.stderr
        metrics[name] = read_metrics(out)
    straight = read_metrics(runs["tp2_long"])[2:]
    assert [r["step"] for r in straight] == [3, 4]
    for name in ("zero0", "zero1"):
        assert [r["step"] for r in metrics[name]] == [3, 4]
        for ours, ref in zip(metrics[name], straight):
            assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5), (name, ours["step"])
            assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), (name, ours)
    fresh = metrics["fresh"][1]  # step 4: after one step with a fresh Adam
    assert fresh["grad_norm"] != pytest.approx(straight[1]["grad_norm"], rel=1e-2)

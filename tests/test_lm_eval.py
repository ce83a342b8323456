"""lm-evaluation-harness with `--model mdm`, end to end on local tasks (no hub, no network).

lm-eval runs from its own command line (registered through `python -m
megatron_mdm.eval.lm_eval_model`) on the training checkpoint; its per-request results are then
recomputed here with the estimators called directly on the `hf` export (another implementation of
the model), with the same seed: they must agree."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from eval_models import tiny_models
from helpers import ROOT, subprocess_env

pytestmark = pytest.mark.slow

DOCS = [
    {"question": "The old man", "choices": ["said", "xyz"], "label": 0},
    {"question": "It was a", "choices": ["dark night", "qq", "cold"], "label": 2},
]
MODEL_ARGS = dict(mc_num=16, mc_batch_size=8, seed=7, gen_length=8, steps=8)


def write_tasks(d):
    data = d / "docs.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    head = (
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    )
    (d / "tiny_choice.yaml").write_text(
        "task: tiny_choice\n" + head + "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n"
    )
    (d / "tiny_generate.yaml").write_text(
        "task: tiny_generate\n" + head + "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{choices[0]}}"\n'
        'generation_kwargs:\n  until: ["."]\nmetric_list:\n  - metric: exact_match\n'
    )
    (d / "tiny_rolling.yaml").write_text(
        "task: tiny_rolling\n" + head + "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{question}}"\n'
        "metric_list:\n  - metric: word_perplexity\n"
    )


@pytest.fixture(scope="module")
def lm_eval_run(tmp_path_factory):
    models = tiny_models(tmp_path_factory.getbasetemp())
    d = tmp_path_factory.mktemp("lm-eval")
    write_tasks(d)
    env = subprocess_env()
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["HF_DATASETS_CACHE"] = str(d / "datasets-cache")
    model_args = ",".join([f"ckpt={models.mdm}", *(f"{k}={v}" for k, v in MODEL_ARGS.items())])
    cmd = [
        sys.executable,
        "-m",
        "megatron_mdm.eval.lm_eval_model",
        "--model",
        "mdm",
        "--model_args",
        model_args,
        "--tasks",
        "tiny_choice,tiny_generate,tiny_rolling",
        "--include_path",
        str(d),
        "--output_path",
        str(d / "out"),
        "--log_samples",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = d / "out"
    [results] = list(out.rglob("results_*.json"))
    samples = {}
    for path in out.rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    return models, json.loads(results.read_text()), samples


@pytest.fixture(scope="module")
def direct(lm_eval_run):
    """Our model class on the hf export, called directly (no lm-eval machinery)."""
    from megatron_mdm.eval.lm_eval_model import MDMEvalModel

    models = lm_eval_run[0]
    return MDMEvalModel(hf=str(models.mdm_hf), **MODEL_ARGS)


def test_results_for_every_task(lm_eval_run):
    _, results, samples = lm_eval_run
    assert set(results["results"]) == {"tiny_choice", "tiny_generate", "tiny_rolling"}
    assert {k: len(v) for k, v in samples.items()} == {
        "tiny_choice": 2,
        "tiny_generate": 2,
        "tiny_rolling": 2,
    }
    assert 0.0 <= results["results"]["tiny_choice"]["acc,none"] <= 1.0


def test_loglikelihoods_equal_the_estimator_called_directly(lm_eval_run, direct):
    from megatron_mdm.eval.likelihood import encode_pair, estimate_log_likelihood

    _, results, samples = lm_eval_run
    correct = 0
    for row in sorted(samples["tiny_choice"], key=lambda r: r["doc_id"]):
        doc = DOCS[row["doc_id"]]
        scores = [float(resp[0][0]) for resp in row["resps"]]
        assert len(scores) == len(doc["choices"])
        for choice, got in zip(doc["choices"], scores):
            prompt, answer = encode_pair(direct.model.tokenizer, doc["question"], " " + choice)
            expected = estimate_log_likelihood(
                direct.model.model_fn,
                prompt,
                answer,
                mask_id=direct.model.mask_id,
                mc_num=16,
                batch_size=8,
                seed=7,
            ).log_likelihood
            assert got == pytest.approx(expected, rel=1e-4)
        correct += int(np.argmax(scores)) == doc["label"]
    assert results["results"]["tiny_choice"]["acc,none"] == correct / len(DOCS)


def test_generations_and_rolling_loglikelihood_match_direct_calls(lm_eval_run, direct):
    from lm_eval.api.instance import Instance

    _, _, samples = lm_eval_run
    for row in samples["tiny_generate"]:
        question = DOCS[row["doc_id"]]["question"]
        request = Instance("generate_until", {}, (question, {"until": ["."]}), 0)
        [expected] = direct.generate_until([request], disable_tqdm=True)
        assert row["resps"][0][0] == expected and "." not in expected
        assert len(expected.encode("utf-8")) <= MODEL_ARGS["gen_length"]
    for row in samples["tiny_rolling"]:
        text = DOCS[row["doc_id"]]["question"]
        request = Instance("loglikelihood_rolling", {}, (text,), 0)
        [expected] = direct.loglikelihood_rolling([request], disable_tqdm=True)
        got = float(np.asarray(row["resps"]).ravel()[0])
        assert got == pytest.approx(expected, rel=1e-4) and got < 0


def test_mdm_is_registered_on_import():
    import lm_eval.api.registry as registry

    import megatron_mdm.eval.lm_eval_model as module

    assert registry.get_model("mdm") is module.MDMEvalModel
    assert "hf" in registry.model_registry  # the built-in models are still there

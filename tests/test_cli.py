"""The command line: bad configs fail fast with one line naming the file and key."""

from __future__ import annotations

import pytest
from helpers import QUICKSTART, run_cli


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.num_layer=3", "model.num_layer"),
        ("parallel.tensor=3", "parallel.tensor"),
        ("parallel.zero_stage=3", "ZeRO-2/3 cannot be combined with pipeline"),
        ("train.lr=fast", "train.lr"),
        ("model.objective=gpt", "model.objective"),
    ],
)
def test_bad_config_is_one_clear_line(override, needle):
    extra = ["parallel.pipeline=2"] if "zero_stage" in override else []
    proc = run_cli("train", QUICKSTART, override, *extra)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "quickstart.yaml" in lines[0]
    assert "Traceback" not in proc.stderr


def test_transformer_engine_spec_without_te_is_a_clear_error():
    pytest.importorskip("megatron.core")
    try:
        import transformer_engine  # noqa: F401

        pytest.skip("transformer-engine is installed here")
    except ImportError:
        pass
    proc = run_cli("train", QUICKSTART, "model.transformer_impl=transformer_engine")
    assert proc.returncode == 2
    assert "transformer-engine" in proc.stderr and "model.transformer_impl" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_missing_config_file():
    proc = run_cli("train", "configs/does-not-exist.yaml")
    assert proc.returncode == 2
    assert "does-not-exist.yaml" in proc.stderr and "Traceback" not in proc.stderr


def test_module_and_console_script_share_main():
    from megatron_mdm import cli

    assert cli.build_parser().prog == "mdm"
    help_text = run_cli("--help").stdout
    assert "train" in help_text

"""`tools/*.py` from a bare checkout (tools/_checkout.py): with the installed package hidden,
the tools still import this checkout's `megatron_mdm`, and `megatron_mdm.kernels` resolves to the
checkout's top-level `kernels/` folder (docs/architecture.md, "Why `kernels/` is top-level").

The checkout is a copy in a temporary folder (without the worktree's `megatron_mdm/kernels`
link), run by `python -I` (no PYTHONPATH, no current folder on sys.path) with every finder and
path entry of the editable install removed; the runner first asserts that `megatron_mdm` is then
not importable at all, so a pass cannot come from the install.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

HIDE_INSTALL = r"""
import importlib.util, runpy, sys

def editable(obj):
    names = (getattr(obj, "__module__", "") or "", repr(obj))
    return any("__editable__" in name for name in names)

sys.meta_path[:] = [f for f in sys.meta_path if not editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not editable(h)]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
sys.path_importer_cache.clear()
assert importlib.util.find_spec("megatron_mdm") is None, "the installed package is still visible"
"""

RUN_TOOL = (
    HIDE_INSTALL
    + r"""
tool, *args = sys.argv[1:]
sys.argv = [tool, *args]
runpy.run_path(tool, run_name="__main__")
"""
)

IMPORT_KERNELS = (
    HIDE_INSTALL
    + r"""
sys.path.insert(0, "tools")
from _checkout import use_checkout
root = use_checkout()
import megatron_mdm
assert importlib.util.find_spec("megatron_mdm.kernels") is not None
import megatron_mdm.kernels.fp8_linear
import megatron_mdm.kernels.fp8_reference as reference
use_checkout()                                       # idempotent: same module objects
assert sys.modules["megatron_mdm.kernels"] is megatron_mdm.kernels
print(root)
print(megatron_mdm.__file__)
print(megatron_mdm.kernels.__file__)
print(reference.__file__)
print(megatron_mdm.kernels.fp8_linear.__file__)
"""
)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The package, kernels, tools and configs, copied as a plain source tree."""
    dest = tmp_path_factory.mktemp("checkout")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")

    def package_skip(folder, names):
        # the worktree's `megatron_mdm/kernels -> ../kernels` link would hide what is tested
        return set(skip(folder, names)) | (
            {"kernels"} if Path(folder).name == "megatron_mdm" else set()
        )

    shutil.copytree(ROOT / "megatron_mdm", dest / "megatron_mdm", ignore=package_skip)
    for folder in ("kernels", "tools", "configs"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=skip)
    assert not (dest / "megatron_mdm" / "kernels").exists()
    return dest


def _python(checkout: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-I", "-c", code, *args],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "tool, args, expect",
    [
        ("convert_checkpoint.py", ["--help"], "reshard"),
        ("scaling_law.py", ["--help"], "sweep"),
        ("preprocess_data.py", ["--help"], "--output-prefix"),
        ("generate_configs.py", ["--check"], ""),
        ("quickstart_report.py", ["--help"], "--lexicon"),
    ],
)
def test_tool_runs_without_the_install(checkout, tool, args, expect):
    result = _python(checkout, RUN_TOOL, f"tools/{tool}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expect in result.stdout


def test_tools_without_the_bootstrap_would_fail(checkout):
    """The control: the hidden install really is hidden, so the runner's tool needs _checkout."""
    code = HIDE_INSTALL + "import megatron_mdm.cli\n"
    result = _python(checkout, code)
    assert result.returncode != 0
    assert "No module named 'megatron_mdm'" in result.stderr


def test_kernels_resolve_inside_the_checkout(checkout):
    result = _python(checkout, IMPORT_KERNELS)
    assert result.returncode == 0, result.stderr[-3000:]
    root, package, kernels, reference, linear = (Path(p) for p in result.stdout.split())
    assert root == checkout.resolve()
    assert package == checkout.resolve() / "megatron_mdm" / "__init__.py"
    assert kernels == checkout.resolve() / "kernels" / "__init__.py"
    assert reference == checkout.resolve() / "kernels" / "fp8_reference.py"
    assert linear == checkout.resolve() / "kernels" / "fp8_linear.py"

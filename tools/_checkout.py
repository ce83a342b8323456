"""Make `tools/*.py` run from a source checkout, installed or not.

Each tool imports this module first (`sys.path` holds the tool's own folder), then calls
`use_checkout()`, which does what `pip install -e .` would have done for this checkout:

- puts the repository root first on `sys.path`, so `import megatron_mdm` is this checkout's
  package even where another copy is installed;
- registers the top-level `kernels/` folder as `megatron_mdm.kernels` when that name does not
  resolve inside this checkout. The layout keeps `kernels/` at the root (docs/design.md §1) and
  setup.py's `package_dir` installs it under the package, so without an install (or with an
  editable install of another tree, whose finder would map the name there) nothing else makes
  `import megatron_mdm.kernels` find this checkout's kernels.

Idempotent, and safe in spawned worker processes, which re-run the tool's top level.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS = "megatron_mdm.kernels"


def _inside_checkout(spec) -> bool:
    origin = getattr(spec, "origin", None)
    return origin is not None and Path(origin).resolve().is_relative_to(ROOT)


def _register_kernels() -> None:
    """`kernels/` under its installed name, as the import system would have loaded it."""
    folder = ROOT / "kernels"
    spec = importlib.util.spec_from_file_location(
        KERNELS, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[KERNELS] = module
    spec.loader.exec_module(module)
    parent, _, child = KERNELS.rpartition(".")
    setattr(sys.modules[parent], child, module)  # as the import system binds a submodule


def use_checkout() -> Path:
    """This checkout's `megatron_mdm` (with its `kernels/`) becomes the importable one; returns
    the repository root."""
    if str(ROOT) not in sys.path[:1]:
        sys.path.insert(0, str(ROOT))
    if KERNELS not in sys.modules:
        package = importlib.util.find_spec("megatron_mdm")
        kernels = importlib.util.find_spec(KERNELS) if package is not None else None
        if _inside_checkout(package) and not _inside_checkout(kernels):
            _register_kernels()
    return ROOT

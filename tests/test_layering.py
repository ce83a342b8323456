"""The package's layers, checked on the source (AST, nothing imported): docs/design.md §1.

    utils, config  <  parallel, model (+ kernels, convert.layouts)  <  diffusion  <  data
      <  checkpointing  <  training  <  convert, inference, scaling  <  eval  <  cli / commands

A module may import only from its own layer or the layers below it. Imports of project modules
inside functions (lazy imports that hide a cycle) are allowed only in the command modules, which
import what a command needs when it runs so that `mdm --help` stays fast. Optional packages are
never imported at module level outside the one module that integrates each. Modules stay under
650 lines and functions under 100.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "megatron_mdm"

# Module-name prefix -> layer; the longest matching prefix wins.
LAYERS = {
    "megatron_mdm": 0,  # the package's empty __init__
    "megatron_mdm.utils": 0,
    "megatron_mdm.config": 0,
    "megatron_mdm.convert.hf_modeling": 0,  # standalone: ships inside exports (see below)
    "megatron_mdm.parallel": 1,
    "megatron_mdm.model": 1,
    "megatron_mdm.kernels": 1,
    "megatron_mdm.convert.layouts": 1,  # a pure name/shape table that checkpointing reads
    "megatron_mdm.convert.layout_configs": 1,  # layouts' config.json builders
    "megatron_mdm.convert.causal_lm": 1,  # HF causal LM config.json -> model keys, hub ids
    "megatron_mdm.diffusion": 2,
    "megatron_mdm.data": 3,
    "megatron_mdm.checkpointing": 4,
    "megatron_mdm.training": 5,
    "megatron_mdm.convert": 6,
    "megatron_mdm.inference": 6,
    "megatron_mdm.scaling": 6,
    "megatron_mdm.eval": 7,
    "megatron_mdm.cli": 8,
    "megatron_mdm.config_show": 8,
}
COMMAND_LAYER = 8  # every `<package>.commands` module is a command module
OPTIONAL = {"transformer_engine", "lm_eval", "matplotlib", "deepspeed", "flash_attn", "apex"}
# The one module allowed to import each optional package at module level.
INTEGRATES = {"lm_eval": {"megatron_mdm.eval.lm_eval_model"}}
MAX_MODULE_LINES = 650
MAX_FUNCTION_LINES = 100


@cache
def modules() -> dict[str, Path]:
    """Module name -> source file, `kernels/` under its installed name."""
    found = {}
    for base, prefix in ((ROOT / PACKAGE, PACKAGE), (ROOT / "kernels", f"{PACKAGE}.kernels")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def layer(module: str) -> int:
    if module.endswith(".commands"):
        return COMMAND_LAYER
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = modules()[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


@cache
def type_checking_lines(module: str) -> frozenset[int]:
    """Lines of imports under `if TYPE_CHECKING:` (no runtime dependency, so no cycle)."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    return frozenset(
        child.lineno
        for node in ast.walk(tree)
        if _is_type_checking(node)
        for child in ast.walk(node)
        if isinstance(child, ast.Import | ast.ImportFrom)
    )


def imports(module: str) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function?, line) for every import statement."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                out.extend((alias.name, in_function, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(module, child)
                names = [f"{target}.{a.name}" for a in child.names]
                # `from pkg import module` imports a module; `from module import name` does not
                out.extend(
                    (name if name in modules() else target, in_function, child.lineno)
                    for name in names
                )
            visit(child, inner)

    visit(tree, False)
    return out


def project_imports(module: str):
    return [(m, f, n) for m, f, n in imports(module) if m.split(".")[0] == PACKAGE]


def test_every_module_has_a_layer():
    for module in modules():
        assert layer(module) >= 0, module


def test_imports_point_down_the_layers():
    problems = []
    for module in modules():
        for target, _, line in project_imports(module):
            if layer(target) > layer(module):
                problems.append(
                    f"{module}:{line} (layer {layer(module)}) imports {target} "
                    f"(layer {layer(target)})"
                )
    assert not problems, "\n".join(problems)


def test_hf_modeling_is_standalone():
    """The modeling files are copied into exports and run without megatron-mdm installed."""
    standalone = "megatron_mdm.convert.hf_modeling"
    for module in modules():
        if module.startswith(standalone):
            outside = [t for t, _, _ in project_imports(module) if not t.startswith(standalone)]
            assert not outside, (module, outside)


def test_no_lazy_project_imports_outside_commands():
    problems = [
        f"{module}:{line} imports {target} inside a function"
        for module in modules()
        if layer(module) != COMMAND_LAYER
        for target, in_function, line in project_imports(module)
        if in_function
    ]
    assert not problems, "\n".join(problems)


def test_optional_packages_are_imported_on_use():
    problems = []
    for module in modules():
        for target, in_function, line in imports(module):
            top = target.split(".")[0]
            if top in OPTIONAL and not in_function and module not in INTEGRATES.get(top, ()):
                problems.append(f"{module}:{line} imports {target} at module level")
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    graph = {
        m: {
            t
            for t, in_function, line in project_imports(m)
            if not in_function and t in modules() and line not in type_checking_lines(m)
        }
        for m in modules()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_module_and_function_sizes():
    problems = []
    for path in modules().values():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            problems.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length}")
    assert not problems, "\n".join(problems)


def test_the_checker_sees_what_it_checks():
    """Guard against a checker that passes because it found nothing."""
    assert len(modules()) > 60
    assert layer("megatron_mdm.training.loop") == 5
    assert layer("megatron_mdm.eval.commands") == COMMAND_LAYER
    assert layer("megatron_mdm.kernels.fp8_linear") == 1
    loop = project_imports("megatron_mdm.training.loop")
    assert any(t == "megatron_mdm.checkpointing.run_dir" and not f for t, f, _ in loop)
    lazy = [t for t, f, _ in project_imports("megatron_mdm.cli") if f]
    assert lazy, "cli.py imports its commands lazily; the AST walk must see that"

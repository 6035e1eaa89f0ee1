"""The package's layers as DESIGN.md draws them, read from the source (every import, lazy ones too):
data flows one way, task -> rollout -> reward -> objective -> trainer, and no module reaches back."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src"


def package_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (`sft2grpo.x.y` names)."""
    mods = {}
    for path in (SRC / "sft2grpo").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = path
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # from . import x / from .x import y
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            edges[m] |= {n for n in names if n in mods and n not in (m, "sft2grpo")}
    return edges


EDGES = package_imports()


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in EDGES[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_objective_imports_nothing_from_the_package():
    assert EDGES["sft2grpo.objective"] == set()


def test_models_do_not_import_rollout():
    assert not {m for m in reachable("sft2grpo.models") if m.startswith("sft2grpo.rollout")}


@pytest.mark.parametrize("module", sorted(EDGES))
def test_no_import_cycle(module):
    # a package __init__ may import its own submodules (rollout's registry); anything else that
    # comes back to `module` is a cycle
    back = {m for m in EDGES[module] if module in reachable(m) and not m.startswith(module + ".")}
    assert not back, f"{module} <-> {sorted(back)}"


def test_one_place_wires_model_task_reward_and_engine():
    """Only components.py builds a rollout engine; the trainer, `sft2grpo eval` and the ladder's
    measurements call it."""
    builders = {m for m, e in EDGES.items() if "sft2grpo.rollout" in e and m != "sft2grpo.components"}
    users = {m for m, e in EDGES.items() if "sft2grpo.components" in e}
    assert builders == set(), builders
    assert users == {"sft2grpo.trainer", "sft2grpo.cli", "sft2grpo.ladder.measure", "sft2grpo.sample"}

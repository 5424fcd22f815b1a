"""The folders say which code talks to a real registry and which only stands in for one.

`chalicelib/registry/sandbox/` holds the simulators and their rule set; the production side
(port, clients, builders, crypto, wire formats) must not lean on them, or a stage talking to a
real registry would run simulator code. Only the composition root may import the sandbox, to
build an in-process simulator for a stage without a registry of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHALICELIB = ROOT / "chalicelib"
SANDBOX = "chalicelib.registry.sandbox"
MAY_IMPORT_THE_SANDBOX = {CHALICELIB / "composition.py"}


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_composition_root_imports_the_sandbox() -> None:
    leaning = {
        str(path.relative_to(ROOT)): sorted(n for n in _imported(path) if n.startswith(SANDBOX))
        for path in CHALICELIB.rglob("*.py")
        if "sandbox" not in path.parts and path not in MAY_IMPORT_THE_SANDBOX
    }
    assert {path: names for path, names in leaning.items() if names} == {}


def test_the_sandbox_holds_the_simulators_and_their_rules() -> None:
    # Guards the check above against a move that empties the folder it looks for.
    present = {p.stem for p in (CHALICELIB / "registry" / "sandbox").glob("*.py")}
    assert {"simulator", "verifier", "rules", "chronicler"} <= present
    assert any(n.startswith(SANDBOX) for n in _imported(CHALICELIB / "composition.py"))

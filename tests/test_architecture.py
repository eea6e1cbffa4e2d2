"""The layout rules a newcomer relies on (docs/architecture.md): no import cycles, no module over 500
lines, and the format's constants defined in one place each."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llmvox"
MAX_LINES = 500
LONGER_ALLOWED = {"text/normalize.py"}  # the text normaliser's rule tables read best in one file


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere (top level, in functions, under TYPE_CHECKING)."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                found = resolve(target) if target.startswith("llmvox") else None
                if found and found != name and found != "llmvox":
                    graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_lazy_imports_included():
    graph = import_graph()
    assert "llmvox.engine.stream" in graph["llmvox.server.utterance"]  # the walk sees real imports
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= LONGER_ALLOWED, long


def test_special_ids_and_the_sample_rate_are_defined_once():
    definitions: dict[str, list[str]] = {}
    pattern = re.compile(r"^\s*([A-Z_]+)\s*(?::[^=]+)?=\s*(453|384|385|24_?000)\b", re.M)
    for path in PACKAGE.rglob("*.py"):
        for name, value in pattern.findall(path.read_text()):
            definitions.setdefault(value.replace("_", ""), []).append(f"{path.relative_to(PACKAGE)}:{name}")
    assert definitions == {"453": ["model/speech_decoder.py:EOA_ID"], "384": ["text/tokenizer.py:PAD_ID"],
                           "385": ["text/tokenizer.py:SENTENCE_END_ID"], "24000": ["codec/config.py:SAMPLE_RATE"]}

"""The import layering of `whisper_sv`: subpackages by stage, each importing only what its docstring
says, and no import cycle between modules.

An `ast` walk over ``src/whisper_sv`` collects every import of a `whisper_sv` module: at the top of
a module and inside functions alike (an import hidden in a function is still a dependency; that is
how two cycles once went unseen), plus the stage modules `cli` names as strings for ``importlib``.
Nothing is imported, so the check takes well under a second.

`MAY_IMPORT` is the design, lowest subpackage first; a subpackage may also import its own modules.
The order is the order data flows through the stages, so no import runs back up:

    common, audio            plumbing; sound in, numbers out
    models, data             Whisper models; corpora and feature stores (what the stages hand each other)
    synth, features, training, serving, evaluation, search
    the top: cli and demo    may import anything; nothing imports them

What the map also says, by leaving a name out: training and evaluation read feature stores through
`data`, never the feature pipeline (`features`); serving (export, transcription, the app) imports
nothing of training, the search or the feature pipeline; the evaluation may run the app's backend
(`serving`), but serving never imports the evaluation.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "whisper_sv"

MAY_IMPORT: dict[str, set[str]] = {
    "common": set(),
    "audio": {"common"},
    "models": {"common", "audio"},
    "data": {"common", "audio", "models"},
    "synth": {"common", "audio", "data"},
    "features": {"common", "audio", "models", "data"},
    "training": {"common", "audio", "models", "data"},
    "serving": {"common", "audio", "models"},
    "evaluation": {"common", "audio", "models", "data", "serving"},
    "search": {"common", "audio", "models", "data", "features", "training"},
}
TOP = {"__init__", "cli", "demo"}  # modules beside the subpackages
_NAMED_MODULE = re.compile(r"whisper_sv((?:\.\w+)+)")


def module_names(package: Path) -> set[str]:
    """Every module as a dotted name below the package: ``cli``, ``training.train``, ``audio`` (an __init__)."""
    names = set()
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        names.add(".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts))
    return names


def _resolve(dotted: str, modules: set[str]) -> str | None:
    """The longest known module a dotted name starts with (``training.train.x`` -> ``training.train``)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the `whisper_sv` modules it imports anywhere in its file (top level or in a function)."""
    modules = module_names(package)
    graph: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        me = ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)
        here = list(parts[:-1])  # the package this file's relative imports start from
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here[: len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
                for alias in node.names:  # `from ..audio import logmel` names a module; `from .x import y` a name in x
                    targets.add(".".join(base + [alias.name]) if ".".join(base + [alias.name]) in modules else ".".join(base))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "whisper_sv":
                base = node.module.split(".")[1:]
                for alias in node.names:
                    targets.add(".".join(base + [alias.name]) if ".".join(base + [alias.name]) in modules else ".".join(base))
            elif isinstance(node, ast.Import):
                targets.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("whisper_sv."))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                named = _NAMED_MODULE.fullmatch(node.value)  # importlib.import_module("whisper_sv.x.y"), cli's STAGES
                if named:
                    targets.add(named.group(1)[1:])
        graph[me] = {m for t in targets if (m := _resolve(t, modules))} - {me, ""}
    return graph


def subpackage(module: str) -> str:
    """``training.train`` -> ``training``; a top-level module (``cli``) is its own name."""
    return module.split(".")[0]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def wrong_imports(graph: dict[str, set[str]], may_import: dict[str, set[str]] = MAY_IMPORT) -> list[str]:
    """Each import a subpackage's module makes of a subpackage the design does not let it import."""
    return [f"{a} imports {b} ({subpackage(a)} may import {sorted(may_import[subpackage(a)]) or 'nothing else'})"
            for a in sorted(graph) if subpackage(a) in may_import for b in sorted(graph[a])
            if subpackage(b) != subpackage(a) and subpackage(b) not in may_import[subpackage(a)]]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_walk_sees_relative_absolute_in_function_and_importlib_imports(tmp_path):
    for folder in ("low", "high"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text('"""doc"""\n')
    (tmp_path / "low" / "a.py").write_text("from ..high.b import x\nfrom . import c\n")
    (tmp_path / "low" / "c.py").write_text("")
    (tmp_path / "high" / "b.py").write_text("def f():\n    from whisper_sv.low import a\n")
    (tmp_path / "cli.py").write_text("STAGES = (('b', 'whisper_sv.high.b'),)\n")
    g = import_graph(tmp_path)
    assert g["low.a"] == {"high.b", "low.c"}
    assert g["high.b"] == {"low.a"} and g["cli"] == {"high.b"}
    assert find_cycle(g) == ["high.b", "low.a", "high.b"]
    assert wrong_imports(g, {"low": set(), "high": {"low"}}) == ["low.a imports high.b (low may import nothing else)"]


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_lives_in_a_designed_subpackage(graph):
    top = {m for m in graph if "." not in m and m not in MAY_IMPORT}
    assert top == TOP, f"modules beside the subpackages: {sorted(top - TOP)}; put them in one of {sorted(MAY_IMPORT)}"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(MAY_IMPORT), f"subpackages not in MAY_IMPORT: {sorted(folders - set(MAY_IMPORT))}; gone: {sorted(set(MAY_IMPORT) - folders)}"


def test_each_subpackage_imports_only_what_the_design_allows(graph):
    wrong = wrong_imports(graph)
    assert not wrong, "; ".join(wrong)


def test_nothing_imports_the_top(graph):
    wrong = sorted(f"{a} imports {b}" for a in graph for b in graph[a] if b in TOP - {"__init__"})
    assert not wrong, wrong


def test_each_subpackage_docstring_states_what_it_may_import():
    """The docstring's ``May import:`` line is the design a reader sees; it must agree with MAY_IMPORT."""
    for name, allowed in MAY_IMPORT.items():
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text(encoding="utf-8"))) or ""
        line = next((ln for ln in doc.splitlines() if ln.startswith("May import:")), None)
        assert line, f"{name}/__init__.py: say what it may import in a 'May import:' line"
        assert set(re.findall(r"`(\w+)`", line)) == allowed, f"{name}: docstring says {line!r}, MAY_IMPORT {sorted(allowed)}"


def test_the_subpackages_form_no_cycle():
    assert find_cycle(MAY_IMPORT) is None

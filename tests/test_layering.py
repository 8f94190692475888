"""The import layering of `whisper_sv` (issue #12): no cycle, and each layer imports only below it.

An `ast` walk over ``src/whisper_sv`` collects every import of a `whisper_sv` module: at the top of
a module and inside functions alike (an import hidden in a function is still a dependency; that is
how the two cycles of issue #12 went unseen), plus the stage modules `cli` names as strings for
``importlib``. Nothing is imported, so the check takes well under a second.

The layers, lowest first. A module may import modules of a lower layer and, in the two lower
layers, of its own (the graph stays acyclic); a stage never imports another stage:

1. base: no `whisper_sv` imports but each other's (errors, audio constants and loader, metrics,
   locks, the ranks of a multi-process job, options, the CT2 file format, the shard row, the
   synthetic voices and their acoustics, non-speech signals, stitched recordings, the training
   recipe's rows).
2. shared: what several stages use (log-mel, sources, model specs and the packaged model, the
   training config, the decode helpers, the feature config and store, the encoder cache, the
   training run's collator, checkpoints and report, the search's config and report).
3. stages: one subcommand each (synth, features, train, evaluate, export, inference/transcribe).
4. orchestrators: compose stages (search trains, app serves inference, the report card scores
   two models every way users decode them).
5. pipeline: the demo runs every stage and the report card.
6. cli: collects every subcommand; nothing imports it.

And three boundaries the layers alone would allow to blur:

- training and evaluation do not import the feature pipeline (`features`): they read a store
  through `feature_store`, `feature_config` and `shard_format`;
- `decoding`, `feature_config`, `feature_store` and `shard_format` import no stage;
- the app imports nothing of training, the search or the feature pipeline.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "whisper_sv"

LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"__init__", "errors", "audio", "metrics", "locks", "options", "continuation", "ct2_format", "shard_format", "fileio",
              "voices", "realism", "distributed", "nonspeech", "longform", "recipe"}),
    ("shared", {
        "logmel", "logmel_figures", "sources", "models", "packaged", "ct2_state_dict", "ct2_to_transformers", "config", "decoding",
        "feature_config", "feature_store", "shard_merge", "encoder_cache", "encoder_window", "collator", "checkpoints", "run_report", "search_config", "lora",
        "search_report",
    }),
    ("stages", {"synth", "features", "train", "evaluate", "export", "inference"}),
    ("orchestrators", {"search", "app", "report_card"}),
    ("pipeline", {"demo"}),
    ("cli", {"cli"}),
]
SAME_LAYER_ALLOWED = {"base", "shared"}
TRAINING_AND_EVALUATION = {"train", "collator", "checkpoints", "run_report", "encoder_cache", "config", "evaluate"}
STORE_SIDE = {"decoding", "feature_config", "feature_store", "shard_format"}
NOT_IN_THE_APP = {"train", "collator", "checkpoints", "run_report", "encoder_cache", "config", "search", "search_config",
                  "search_report", "features", "synth", "demo"}
_NAMED_MODULE = re.compile(r"whisper_sv\.(\w+)")


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the `whisper_sv` modules it imports anywhere in its file (top level or in a function)."""
    modules = {p.stem for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:  # from .x import y / from . import x
                found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "whisper_sv":
                found.update([node.module.split(".")[1]] if "." in node.module else [a.name for a in node.names])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("whisper_sv."))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                named = _NAMED_MODULE.fullmatch(node.value)  # importlib.import_module("whisper_sv.x"), cli's STAGES
                if named:
                    found.add(named.group(1))
        graph[path.stem] = (found & modules) - {path.stem}
    return graph


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


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_walk_sees_imports_inside_functions_and_importlib_names(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from . import c\n")
    (tmp_path / "c.py").write_text("STAGES = (('a', 'whisper_sv.a'),)\n")
    g = import_graph(tmp_path)
    assert g == {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(g) == ["a", "b", "c", "a"]


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_layer(graph):
    placed = set().union(*(modules for _, modules in LAYERS))
    assert not set(graph) - placed, f"place {sorted(set(graph) - placed)} in a layer of LAYERS (see the docstring)"
    assert not placed - set(graph), f"LAYERS names modules that no longer exist: {sorted(placed - set(graph))}"


def test_each_layer_imports_only_below_it(graph):
    rank = {m: i for i, (_, modules) in enumerate(LAYERS) for m in modules}
    name = {m: layer for layer, modules in LAYERS for m in modules}
    wrong = [
        f"{a} ({name[a]}) imports {b} ({name[b]})"
        for a in sorted(graph) for b in sorted(graph[a])
        if a in rank and b in rank and (rank[b] > rank[a] or (rank[b] == rank[a] and name[a] not in SAME_LAYER_ALLOWED))
    ]
    assert not wrong, "; ".join(wrong)


def test_training_and_evaluation_do_not_import_the_feature_pipeline(graph):
    wrong = sorted(m for m in TRAINING_AND_EVALUATION if "features" in reachable(graph, m))
    assert not wrong, f"these import whisper_sv.features, directly or through others: {wrong}"


def test_the_store_side_and_the_decode_helpers_import_no_stage(graph):
    stages = {m for layer, modules in LAYERS if layer in ("stages", "orchestrators", "pipeline", "cli") for m in modules}
    wrong = {m: sorted(reachable(graph, m) & stages) for m in STORE_SIDE if reachable(graph, m) & stages}
    assert not wrong, f"imports a stage: {wrong}"


def test_the_app_imports_nothing_of_training(graph):
    assert not reachable(graph, "app") & NOT_IN_THE_APP, sorted(reachable(graph, "app") & NOT_IN_THE_APP)

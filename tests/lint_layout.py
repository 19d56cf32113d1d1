"""Layout checks that import-linter does not make: run by ``make lint``.

1. No import cycle between single modules of ``peer``, ``dht`` and ``store``.
   Imports under ``if TYPE_CHECKING:`` count: a cycle hidden there is still
   two modules that must know each other, and it is where drift hid before.
2. No ``.py`` file over ``MAX_LINES`` lines in the source, test, bench and
   spec trees.

It prints one line per violation and exits 1 if there is any. It is a script,
not a test module (its name does not start with ``test_``), so pytest does not
collect it; it needs only grimp, which import-linter brings.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("peer", "dht", "store")
SIZE_TREES = ("peer", "dht", "store", "tests", "bench", "protocol-spec", "examples")
MAX_LINES = 600


def _strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm, iterative: every set of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = []
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work.append((root, iter(sorted(graph.find_modules_directly_imported_by(root)))))
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _one_cycle(graph: grimp.ImportGraph, component: list[str]) -> list[str]:
    """A shortest cycle through the first module of a component, as a path."""
    start = component[0]
    best: tuple[str, ...] | None = None
    for imported in sorted(graph.find_modules_directly_imported_by(start)):
        if imported not in component:
            continue
        back = graph.find_shortest_chain(importer=imported, imported=start)
        if back is not None and (best is None or len(back) < len(best)):
            best = back
    assert best is not None  # a strongly connected component has a way back
    return [start, *best]


def import_cycles() -> list[str]:
    graph = grimp.build_graph(
        *PACKAGES,
        include_external_packages=False,
        exclude_type_checking_imports=False,
        cache_dir=None,  # leave no cache in the tree
    )
    problems = []
    for component in sorted(_strongly_connected(graph)):
        cycle = " -> ".join(_one_cycle(graph, component))
        problems.append(f"import cycle: {cycle} (cycle set: {', '.join(component)})")
    return problems


def _python_files(trees: Iterable[str]) -> Iterator[Path]:
    for tree in trees:
        base = ROOT / tree
        if base.is_dir():
            yield from sorted(p for p in base.rglob("*.py") if ".venv" not in p.parts)


def long_files() -> list[str]:
    problems = []
    for path in _python_files(SIZE_TREES):
        with path.open(encoding="utf-8") as handle:
            lines = sum(1 for _ in handle)
        if lines > MAX_LINES:
            rel = path.relative_to(ROOT)
            problems.append(f"file too long: {rel} has {lines} lines (max {MAX_LINES})")
    return problems


def main() -> int:
    sys.path.insert(0, str(ROOT))
    problems = import_cycles() + long_files()
    for line in problems:
        print(line)
    if problems:
        print(f"lint_layout: {len(problems)} problem(s)")
        return 1
    print("lint_layout: no import cycles, no file over 600 lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())

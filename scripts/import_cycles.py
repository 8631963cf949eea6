"""List import circles between the package's modules, function-level and TYPE_CHECKING imports included.

``lint-imports`` enforces the layers; this script says *where* a circle is
when one appears (each strongly connected component of the module graph,
with one shortest loop through it), which the contracts' output does not.
Exit status 1 if there is any circle.

    python scripts/import_cycles.py [package]
"""

from __future__ import annotations

import sys

import grimp


def components(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & modules)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child) & modules))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def main(package: str = "nebula_credential") -> int:
    # grimp counts imports inside functions and under TYPE_CHECKING alike
    graph = grimp.build_graph(package, exclude_type_checking_imports=False)
    # the package's __init__ re-exports the public API: it imports everything and nothing imports it back
    modules = graph.modules - {package}
    found = components(graph, modules)
    for comp in found:
        print(f"circle of {len(comp)} modules: {', '.join(comp)}")
        members = set(comp)
        start = comp[0]
        for nxt in sorted(graph.find_modules_directly_imported_by(start) & members):
            path = graph.find_shortest_chain(importer=nxt, imported=start)
            if path:
                print("  " + " -> ".join((start, *path)))
                break
    if not found:
        print(f"no import circle in {package}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

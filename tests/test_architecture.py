"""Dependencies point one way (docs/architecture.md, "Layers"), checked on the source with ``ast``: every import
counts, those inside functions too.

- only the command line (alol_ray.cli, alol_ray.commands.*) and the comparison runner import the pipeline;
- there is no import cycle among the project's modules;
- the core modules import nothing of the project but other core modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The repository's folders and the import name of their modules: baselines/ and evaluation/ sit at the top of the
# repository and are imported as alol_ray.baselines / alol_ray.evaluation (symlinks inside alol_ray/; a wheel holds
# them there), so an installed alol-ray takes no top-level name that other packages use.
PACKAGES = {"alol_ray": "alol_ray", "baselines": "alol_ray.baselines", "evaluation": "alol_ray.evaluation"}
ABOVE_PIPELINE = ("alol_ray.cli", "alol_ray.commands", "alol_ray.evaluation.compare")
CORE = ("alol_ray.errors", "alol_ray.columns", "alol_ray.runs", "alol_ray.hashing", "alol_ray.atomic",
        "alol_ray.stage", "alol_ray.runlock", "alol_ray.faults", "alol_ray.ray_compat", "alol_ray.ray_utils",
        "alol_ray.logs", "alol_ray.storage", "alol_ray.locations")


def project_modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):  # rglob does not enter alol_ray/'s two symlinks
            name = ".".join((package, *path.relative_to(REPO / folder).with_suffix("").parts))
            out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its source (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from pkg import module` imports that module; `from module import name`, the module
            candidates = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_parser_sees_function_level_imports():
    g = graph()
    assert "alol_ray.pipeline" in g["alol_ray.commands.train"] or "alol_ray.registry" in g["alol_ray.commands.train"]
    assert "alol_ray.registry" in g["alol_ray.pipeline"]  # imported inside methods only


def test_only_the_command_line_and_the_comparison_runner_import_the_pipeline():
    g = graph()
    importers = sorted(m for m, targets in g.items() if "alol_ray.pipeline" in targets)
    upward = [m for m in importers if not m.startswith(ABOVE_PIPELINE)]
    assert importers and not upward, upward


def test_baselines_and_evaluation_are_imported_by_their_installed_names_only():
    """``import baselines`` works from the repository's root, yet a wheel has no such package, and importing the
    same file under two names makes two modules (two method registries, two of each class): every import in the
    project, its tests and benches names ``alol_ray.baselines`` / ``alol_ray.evaluation``."""
    bare = []
    for folder in ("alol_ray", "baselines", "evaluation", "tests", "bench", "cluster"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                bare += [f"{path.relative_to(REPO)}:{node.lineno} {name}" for name in names
                         if name.split(".")[0] in ("baselines", "evaluation")]
    assert bare == [], bare
    for link in ("baselines", "evaluation"):
        assert (REPO / "alol_ray" / link).resolve() == REPO / link, f"alol_ray/{link} must point at ../{link}"


def test_there_is_no_import_cycle():
    assert cycles(graph()) == []


def test_core_modules_import_only_core_modules():
    g = graph()
    for module in CORE:
        assert g[module] <= set(CORE), (module, sorted(g[module] - set(CORE)))


def function_level_imports_without_reason() -> list[str]:
    """Imports inside functions with no ``#`` comment on their own line(s) or on the line directly above their
    contiguous import block (sibling import statements separated by nothing but blank lines)."""
    missing = []
    for name, path in project_modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                for field in ("body", "orelse", "finalbody"):
                    body = getattr(node, field, None)
                    if not isinstance(body, list):
                        continue
                    first = None  # the first statement of the current import block
                    for i, stmt in enumerate(body):
                        if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
                            first = None
                            continue
                        prev = body[i - 1] if i else None
                        gap = lines[prev.end_lineno: stmt.lineno - 1] if prev is not None else ["x"]
                        starts = first is None or not isinstance(prev, (ast.Import, ast.ImportFrom))
                        if starts or any(g.strip() for g in gap):
                            first = stmt
                        own = any("#" in lines[n - 1] for n in range(stmt.lineno, stmt.end_lineno + 1))
                        above = lines[first.lineno - 2].strip().startswith("#") if first.lineno > 1 else False
                        if not (own or above):
                            missing.append(f"{path.relative_to(REPO)}:{stmt.lineno} {ast.unparse(stmt)}")
    return sorted(set(missing))


def test_function_level_imports_give_a_reason():
    """Imports sit at the top of a file, except deliberately lazy ones (torch, ray, vllm, ... kept off a light
    entry point), each with a one-line reason: ``import torch  # lazy: ...`` or a comment line above the block."""
    assert function_level_imports_without_reason() == []


# --------------------------------------------------------------------- the layer table of docs/architecture.md

DOC = REPO / "docs" / "architecture.md"
# Imports against the table's direction that are known and named in the doc.
KNOWN_UPWARD = {("alol_ray.baselines.methods", "alol_ray.train.checkpoint")}


def _expand(pattern: str) -> list[str]:
    """``a/{b,c}.py`` -> ``a/b.py``, ``a/c.py`` (one brace group)."""
    head, brace, rest = pattern.partition("{")
    if not brace:
        return [pattern]
    options, _, tail = rest.partition("}")
    return [f"{head}{option}{tail}" for option in options.split(",")]


def layer_table() -> list[tuple[str, list[str]]]:
    """(layer, file patterns) per row of the "Layers" table, top row first."""
    import re

    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Layers"):]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("layer", "---"):
            continue
        rows.append((cells[0], [p for token in re.findall(r"`([^`]+\.py)`", cells[1]) for p in _expand(token)]))
    return rows


def layer_ranks() -> dict[str, int]:
    """Module -> its row in the table (0 = the command line, at the top)."""
    import fnmatch

    files = {str(path.relative_to(REPO)): name for name, path in project_modules().items()
             if path.name != "__init__.py"}
    ranks: dict[str, int] = {}
    for rank, (_, patterns) in enumerate(layer_table()):
        for pattern in patterns:
            matched = fnmatch.filter(files, pattern)
            assert matched or "*" in pattern, f"docs/architecture.md lists {pattern}, which matches no module"
            for file in matched:
                assert files[file] not in ranks, f"{file} is in two rows of the layer table"
                ranks[files[file]] = rank
    return ranks


def test_the_layer_table_lists_every_module():
    missing = sorted(str(path.relative_to(REPO)) for name, path in project_modules().items()
                     if path.name != "__init__.py" and name not in layer_ranks())
    assert [row for row, _ in layer_table()] == ["command line", "pipeline", "stages", "services", "definitions",
                                                 "core"]
    assert missing == [], f"add these modules to the layer table of docs/architecture.md: {missing}"


def test_no_module_imports_one_of_a_higher_layer():
    ranks, g = layer_ranks(), graph()
    upward = sorted((m, t) for m, targets in g.items() if m in ranks for t in targets
                    if t in ranks and ranks[t] < ranks[m] and (m, t) not in KNOWN_UPWARD)
    assert upward == [], upward
    still = {(m, t) for m, t in KNOWN_UPWARD if t in g[m]}
    assert still == KNOWN_UPWARD, f"no longer imported: drop from KNOWN_UPWARD and the doc: {KNOWN_UPWARD - still}"

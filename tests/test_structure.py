"""The package's shape: layers that import only downwards, no import cycle, a table name spelled
only in the catalog, the Delta engine reached only through the storage layer, logging instead
of print outside the command line, and no module over 450 lines."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipelines"

# Lower layers never import higher ones. Same-layer imports are allowed (no cycle: see below).
LAYERS = [
    {"pipelines", "pipelines.catalog", "pipelines.console", "pipelines.config"},
    {"pipelines.storage"},
    {"pipelines.datasets", "pipelines.ops"},
    {"pipelines.stages"},
    {"pipelines.ml"},
    {"pipelines.report"},
    {"pipelines.flows"},
    {"pipelines.cli", "pipelines.notebook"},
]
TABLE_NAME = re.compile(r"(bronze|silver|gold|results|ops)\.[a-z_]+")
TABLE_PREFIX = re.compile(r"(bronze|silver|gold|results|ops)\.")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def layer_of(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        for top in layer:
            if module == top or module.startswith(top + "."):
                return i
    raise AssertionError(f"{module} is in no layer of tests/test_structure.py")


def imports(module: str, path: Path) -> set[str]:
    """Every module of the package `module` imports, inside functions too."""
    known = modules()
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                parts = base.split(".")
                mod = ".".join(parts[:len(parts) - node.level + 1] + ([mod] if mod else []))
            names = [f"{mod}.{a.name}" for a in node.names] + [mod]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def code_strings(tree: ast.AST):
    """String constants that are not docstrings, with f-string parts."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def test_every_module_belongs_to_a_layer_and_imports_only_its_own_layer_or_lower():
    wrong = []
    for module, path in modules().items():
        for target in imports(module, path):
            if layer_of(target) > layer_of(module) and not module.startswith(target + "."):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "lower layers import higher ones:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle_counting_imports_inside_functions():
    graph = {m: {t for t in imports(m, p) if not m.startswith(t + ".")} for m, p in modules().items()}
    seen, stack, cycles = set(), [], []

    def visit(node, on_path):
        if node in on_path:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        on_path.add(node)
        stack.append(node)
        for nxt in graph[node]:
            visit(nxt, on_path)
        stack.pop()
        on_path.discard(node)

    for module in graph:
        visit(module, set())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_table_names_are_spelled_only_in_the_catalog():
    spelled = []
    for module, path in modules().items():
        if module == "pipelines.catalog":
            continue
        tree = ast.parse(path.read_text())
        for node in code_strings(tree):
            if TABLE_NAME.fullmatch(node.value) or TABLE_PREFIX.fullmatch(node.value):
                spelled.append(f"{module}:{node.lineno} {node.value!r}")
    assert not spelled, "table names outside pipelines/catalog.py:\n" + "\n".join(spelled)


def test_only_the_storage_layer_reaches_the_delta_engine():
    reached = []
    for module, path in modules().items():
        if module.startswith("pipelines.storage"):
            continue
        text = path.read_text()
        for pattern in (".delta(", "deltalake", "get_add_actions", "to_pyarrow_table"):
            if pattern in text:
                reached.append(f"{module}: {pattern}")
    assert not reached, "\n".join(reached)


def test_library_modules_log_and_only_the_command_line_prints():
    printing = []
    for module, path in modules().items():
        if module.startswith("pipelines.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{module}:{node.lineno}")
    assert not printing, "print() outside pipelines/cli: " + ", ".join(printing)


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_module_is_over_450_lines(module):
    assert len(modules()[module].read_text().splitlines()) <= 450


# What names a dataset of conf/base/datasets/ rather than tabular data in general: generic code
# reads these from the dataset's YAML and never spells them.
DATASET_WORDS = re.compile(r"flight|arr_delay|dep_delay|carrier|tailnum|nycflights|bundesliga|homegoals|awaygoals"
                           r"|hometeam|awayteam|match_id", re.IGNORECASE)


def test_generic_code_names_no_dataset():
    """Outside the files named after a dataset, no identifier or string constant names one."""
    datasets = {p.stem for p in (PACKAGE.parent / "conf" / "base" / "datasets").glob("*.yaml")}
    found = []
    for name, path in modules().items():
        if path.stem in datasets:
            continue
        tree = ast.parse(path.read_text())
        strings = {id(node) for node in code_strings(tree)}
        for node in ast.walk(tree):
            if id(node) in strings:
                text = node.value
            elif isinstance(node, ast.Name):
                text = node.id
            elif isinstance(node, ast.Attribute):
                text = node.attr
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                text = node.name
            elif isinstance(node, ast.arg):
                text = node.arg
            else:
                continue
            if DATASET_WORDS.search(text):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}: {text[:60]!r}")
    assert not found, "generic code names a dataset:\n" + "\n".join(found)

"""The layering of the package, read from its source with ast (nothing is imported or run).

- the sync layer (the worker, the outbox, intake) and the sending engine import no command
  module (``push``, ``pull``, ``cli``), directly or through another module;
- the mapping package does no I/O: no file, database, network or process module, no
  ``open()``, no validation run, and nothing of the layers that do I/O.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ims_fhir"
COMMANDS = {"ims_fhir.push", "ims_fhir.pull", "ims_fhir.cli"}
IO_MODULES = {"sqlite3", "os", "io", "pathlib", "tempfile", "gzip", "bz2", "shutil", "socket", "subprocess", "requests",
              "urllib.request", "http.client", "csv", "glob", "mmap", "multiprocessing", "threading"}
#: layers that do I/O or run validation, which the mapping must not reach
NOT_FOR_MAPPING = {"ims_fhir.fhir.validation", "ims_fhir.workstore", "ims_fhir.importing", "ims_fhir.importer",
                   "ims_fhir.client", "ims_fhir.sync", "ims_fhir.delivery", "ims_fhir.convert", "ims_fhir.pipeline",
                   "ims_fhir.records.readers", "ims_fhir.records.writers", *COMMANDS}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


@cache
def imports(name: str) -> frozenset[str]:
    """Every module ``name`` imports (with the packages Python imports on the way), from its source."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    here = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES)
    with_parents = set(found)
    for module in found:
        while "." in module:
            module = module.rpartition(".")[0]
            with_parents.add(module)
    return frozenset(with_parents)


def reach(name: str) -> set[str]:
    """The ims_fhir modules ``name`` imports, transitively."""
    seen: set[str] = set()
    stack = [name]
    while stack:
        for module in imports(stack.pop()):
            if module in MODULES and module not in seen:
                seen.add(module)
                stack.append(module)
    return seen


def _under(prefix: str) -> list[str]:
    return sorted(m for m in MODULES if m == prefix or m.startswith(prefix + "."))


def test_the_graph_reader_sees_the_package() -> None:
    assert {"ims_fhir.sync.worker", "ims_fhir.delivery.engine", "ims_fhir.mapping.reverse.context",
            "ims_fhir.push"} <= set(MODULES)
    assert "ims_fhir.delivery.engine" in reach("ims_fhir.sync.worker")
    assert "ims_fhir.delivery" in reach("ims_fhir.push")  # the reader does follow imports
    assert "ims_fhir.records.models" in imports("ims_fhir.mapping.people")  # relative imports resolved


def test_the_sync_layer_and_the_engine_import_no_command_module() -> None:
    for module in _under("ims_fhir.sync") + _under("ims_fhir.delivery") + ["ims_fhir.pipeline"]:
        assert not reach(module) & COMMANDS, f"{module} reaches {sorted(reach(module) & COMMANDS)}"


def test_the_mapping_package_does_no_io() -> None:
    for module in _under("ims_fhir.mapping"):
        io = {m for m in imports(module) for i in IO_MODULES if m == i or m.startswith(i + ".")}
        assert not io, f"{module} imports {sorted(io)}"
        reached = {m for m in reach(module) for layer in NOT_FOR_MAPPING if m == layer or m.startswith(layer + ".")}
        assert not reached, f"{module} reaches {sorted(reached)}"
        tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
        calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
        assert "open" not in calls, f"{module} opens a file"
        assert not names & {"validate_record", "validate_resource"}, f"{module} runs validation"

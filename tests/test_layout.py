"""The project's shape: jobs are configuration only, imports follow the layers, no script edits the import path.

Layers (docs/ARCHITECTURE.md): methods (``fedavg``, ``fedsm``, ``harmofl``, ``prrfl``, ``fedmas``) -> federations
-> common. A method imports no other method except ``fedavg`` (the base controller); a federation imports no
method; ``common`` imports neither (only the package root, for its version); a server module imports no client
module.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path
from typing import Dict, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medfl"
METHODS = ("fedavg", "fedsm", "harmofl", "prrfl", "fedmas")
CLIENT_MODULES = ("executor", "client")
SERVER_MODULES = ("controller", "server")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def medfl_imports(path: Path) -> Set[str]:
    """The ``medfl`` modules that ``path`` imports (relative imports resolved)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("medfl"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("medfl"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names
                             if (PACKAGE.parent / Path(*f"{base}.{a.name}".split("."))).with_suffix(".py").is_file())
    return found


MODULES: Dict[str, Set[str]] = {module_name(p): medfl_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2:
        return "package"
    return "federations" if parts[1] == "federations" else parts[1]


def test_jobs_hold_configuration_only():
    tracked = subprocess.run(["git", "ls-files", "-s", "jobs"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert tracked, "no job is tracked"
    links = [line.split("\t")[1] for line in tracked if line.startswith("120000")]
    assert not links, f"symlinks under jobs/: {links[:5]}"
    code = [p for p in (ROOT / "jobs").rglob("*") if p.suffix == ".py" or p.name == "custom"]
    assert not code, f"code under jobs/: {code[:5]}"


def test_no_import_path_edits():
    """Scripts, benchmarks and tests import the installed package (the README's ``grep`` finds nothing)."""
    needle = "sys" + ".path"
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                 if not {".venv", ".venv-flower"} & set(p.parts) and needle in p.read_text()]
    assert not offenders, offenders


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module):
    own = layer(module)
    for imported in MODULES[module]:
        other = layer(imported)
        if own == "common":  # the package root holds only the version
            assert other in ("common", "package"), f"{module} (common) imports {imported}"
        elif own == "federations":
            assert other in ("common", "federations"), f"{module} (a federation) imports the method {imported}"
        elif own in METHODS:
            assert other in ("common", "federations", own, "fedavg", "package"), \
                f"{module} (method {own}) imports another method's module {imported}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.rpartition(".")[2] in SERVER_MODULES))
def test_servers_import_no_client_module(module):
    clients = [m for m in MODULES[module] if m.rpartition(".")[2] in CLIENT_MODULES]
    assert not clients, f"{module} imports client modules {clients}: move shared names to a protocol module"

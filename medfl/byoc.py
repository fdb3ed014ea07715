"""Export a job that carries its code (BYOC): each app's ``custom/`` holds exactly the medfl files the job needs.

    python -m medfl export-byoc jobs/fedavg_prostate workspaces/byoc/fedavg_prostate

The jobs of this repository are configuration only: every site installs the same medfl release and allows its
classes (``python -m medfl site-policy``). A site that prefers to review the code of each job instead receives
this export. What goes into ``app*/custom/medfl/`` is the import closure of the job's medfl modules:

* the modules the app's configuration names (component ``path`` entries, ``"module:name"`` network names, any
  string value starting with ``medfl.`` in its ``config/*.json``),
* the medfl modules those import, found by parsing their source (``import`` statements anywhere in a module,
  relative ones resolved), repeated until nothing new is found,
* and the ``__init__.py`` of every package on the way (importing ``medfl.a.b`` runs ``medfl/__init__.py`` and
  ``medfl/a/__init__.py``), so the copy is a regular package with its own ``__version__``.

Nothing else is copied: no other method, no tools, no tests. The export's ``meta.json`` names the version of the
copied code (``medfl_version``, :mod:`medfl.common.job_version`), which is the version every site then checks.
Submitting it needs the ``byoc`` right (NVFlare's ``authorization.json``: ``project_admin`` and ``lead`` by default).
"""

from __future__ import annotations

import ast
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set

import medfl
from medfl.common.errors import DataError
from medfl.common.job_version import MEDFL_VERSION_KEY
from medfl.job_config import check_job, config_dirs, read_json
from medfl.variant import MARKER

PACKAGE = "medfl"
SOURCE_ROOT = Path(medfl.__file__).resolve().parents[1]  # the folder that holds the package folder
CUSTOM = "custom"
META = "meta.json"


def module_file(module: str, root: Path = SOURCE_ROOT) -> Optional[Path]:
    """The source file of ``module`` (``medfl.a.b`` -> ``medfl/a/b.py`` or ``medfl/a/b/__init__.py``) under ``root``."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_imports(module: str, root: Path = SOURCE_ROOT) -> Set[str]:
    """The medfl modules that ``module``'s source imports (relative imports resolved; ``from X import name`` counts
    ``X.name`` when that is a module)."""
    path = module_file(module, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == PACKAGE:
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names
                             if module_file(f"{base}.{alias.name}", root) is not None)
    return found


def with_packages(module: str) -> List[str]:
    """``module`` and every package above it: ``medfl.a.b`` -> ``medfl``, ``medfl.a``, ``medfl.a.b``."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_closure(modules: Set[str], root: Path = SOURCE_ROOT) -> Set[str]:
    """``modules``, their packages, and everything they import within medfl, transitively."""
    closure: Set[str] = set()
    todo = [m for module in sorted(modules) for m in with_packages(module)]
    while todo:
        module = todo.pop()
        if module in closure:
            continue
        if module_file(module, root) is None:
            continue  # a namespace package (a folder without __init__.py): nothing to copy or parse
        closure.add(module)
        todo.extend(m for imported in module_imports(module, root) for m in with_packages(imported))
    return closure


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def named_module(name: str, root: Path = SOURCE_ROOT) -> Optional[str]:
    """The module a configuration string names: ``medfl.a.b.Class`` -> ``medfl.a.b``, ``medfl.a.b:builder`` ->
    ``medfl.a.b`` (the longest prefix that is a module); ``None`` when no prefix is."""
    dotted = name.partition(":")[0]
    for module in reversed(with_packages(dotted)[1:]):
        if module_file(module, root) is not None:
            return module
    return None


def configured_modules(config_dir: Path, root: Path = SOURCE_ROOT) -> Set[str]:
    """The medfl modules that the JSON files of an app's ``config`` folder name."""
    modules = set()
    for path in sorted(config_dir.glob("*.json")):
        for text in _strings(read_json(path)):
            if text.startswith(f"{PACKAGE}."):
                module = named_module(text, root)
                if module is None:
                    raise DataError(f"'{text}' names no module of the medfl package", path=path)
                modules.add(module)
    return modules


def app_files(config_dir: Path, root: Path = SOURCE_ROOT) -> List[Path]:
    """The package files (relative to ``root``) that the app of ``config_dir`` needs, sorted."""
    closure = import_closure(configured_modules(config_dir, root), root)
    return sorted(module_file(module, root).relative_to(root) for module in closure)


def export_byoc(job: Path, target: Path) -> Path:
    """Write ``job`` with each app's medfl files into ``target`` (built aside, renamed into place); return it.

    The job's configuration is checked first (:func:`medfl.job_config.check_job`). ``target`` must not exist, nor lie
    inside ``job``; a job that already carries code is refused (its ``custom/`` would mix with the export).
    """
    from medfl.common.io import temporary_name  # imports torch: not at module level, so the CLI starts quickly

    job, target = Path(job).resolve(), Path(target).resolve()
    if not (job / META).is_file():
        raise DataError(f"not a job folder (no {META})", path=job)
    if target.exists():
        raise DataError("the target exists; choose a new folder", path=target)
    if job in target.parents:
        raise DataError(f"the target lies inside the job {job}", path=target)
    carried = sorted(str(p.relative_to(job)) for p in job.glob(f"app*/{CUSTOM}"))
    if carried:
        raise DataError(f"the job already carries code in {carried}; export a job of configuration only", path=job)
    check_job(job)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_name(target)
    try:
        shutil.copytree(job, staging, ignore=shutil.ignore_patterns("__pycache__", MARKER))
        for config_dir in config_dirs(staging):
            for relative in app_files(config_dir):
                destination = config_dir.parent / CUSTOM / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(SOURCE_ROOT / relative, destination)
        meta = read_json(staging / META)
        meta[MEDFL_VERSION_KEY] = medfl.__version__
        (staging / META).write_text(json.dumps(meta, indent=2) + "\n")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def add_command(commands) -> None:
    """Register ``export-byoc`` on the ``python -m medfl`` sub-command parser ``commands``."""
    command = commands.add_parser("export-byoc", help="write a job that carries exactly the medfl files it needs "
                                                      "(for sites that review each job's code)")
    command.add_argument("job", type=Path, help="a job folder of configuration only, e.g. jobs/fedavg_prostate")
    command.add_argument("target", type=Path, help="the new job folder to write (must not exist)")
    command.set_defaults(handler=run_command)


def run_command(args) -> int:
    try:
        target = export_byoc(args.job, args.target)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files: Dict[str, int] = {str(p.parent.relative_to(target)): len(list(p.rglob("*.py")))
                             for p in sorted(target.glob(f"app*/{CUSTOM}/{PACKAGE}"))}
    print(f"BYOC job written to {target} (medfl {medfl.__version__}; files per app: {files})")
    return 0

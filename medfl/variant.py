"""Copy a job with some settings changed, e.g. a short demo or test run of a job whose defaults are the paper's.

    python tools/job_variant.py jobs/fedsm_prostate workspaces/jobs/fedsm_prostate \
        --server num_rounds=5 --train local_epochs=2 num_threads=1

``--server KEY=VALUE`` sets an argument of every server workflow that already has it; ``--train KEY=VALUE``
sets a key of ``config_train.json``, and the same argument of every workflow that has it (settings both sides
hold, such as ``network`` and ``seed``, stay equal). Values are JSON (``5``, ``true``, ``"text"``) or plain
strings. The variant is checked through the typed settings of its workflows and executors before it is written.

The target must lie outside the source job and outside the project's ``jobs/`` folder. A variant folder holds a
marker file (:data:`MARKER`); an existing target is replaced only when it holds that marker (a variant made
earlier) or with ``force``, so that no folder this tool did not make is ever deleted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, List

from medfl.common.errors import DataError
from medfl.job_config import check_job

MARKER = ".medfl_job_variant"
JOBS_DIR = Path(__file__).resolve().parents[1] / "jobs"


class VariantError(ValueError):
    """A job variant that cannot be made as asked (the message says why; nothing was changed)."""


def parse_assignments(pairs: List[str]) -> Dict[str, object]:
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise VariantError(f"expected KEY=VALUE, got {pair!r}")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_target(source: Path, target: Path, force: bool = False) -> None:
    """Refuse a target that is, contains or lies inside the source or ``jobs/``, or an existing folder that is
    not a variant made earlier (unless ``force``)."""
    source, target = source.resolve(), target.resolve()
    for protected in (source, JOBS_DIR):
        if _overlaps(target, protected):
            raise VariantError(f"target {target} is, contains or lies inside {protected}: choose a folder elsewhere")
    if target.exists() and not (target / MARKER).is_file() and not force:
        raise VariantError(f"target {target} exists and is not a job variant made by this tool (no {MARKER}); "
                           f"remove it yourself or pass --force")


def make_variant(source: Path, target: Path, server: Dict[str, object], train: Dict[str, object],
                 force: bool = False) -> Path:
    """Copy ``source`` to ``target`` (replacing an earlier variant there) and apply the overrides; return ``target``.

    The copy is built in a temporary folder beside ``target`` and renamed into place, so a failed override leaves
    ``target`` as it was.
    """
    source, target = Path(source), Path(target)
    if not (source / "meta.json").is_file():
        raise VariantError(f"{source} is not a job folder (no meta.json)")
    check_target(source, target, force)
    staging = target.with_name(f".{target.name}.tmp")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("__pycache__"))
    try:
        apply_overrides(staging, server, train)
        check_job(staging)
        (staging / MARKER).write_text(f"variant of {source.resolve()}\n")
    except BaseException:
        shutil.rmtree(staging)
        raise
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def apply_overrides(job: Path, server: Dict[str, object], train: Dict[str, object]) -> None:
    """Set the workflow arguments ``server`` and the ``config_train.json`` keys ``train`` of the job folder ``job``."""
    config_dir = job / "app" / "config"
    server_path = config_dir / "config_fed_server.json"
    config = json.loads(server_path.read_text())
    for key, value in server.items():
        workflows = [w for w in config.get("workflows", []) if key in w.get("args", {})]
        if not workflows:
            raise VariantError(f"no workflow of {server_path} has an argument '{key}'")
        for workflow in workflows:
            workflow["args"][key] = value
    for key, value in train.items():
        for workflow in config.get("workflows", []):
            if key in workflow.get("args", {}):
                workflow["args"][key] = value
    server_path.write_text(json.dumps(config, indent=2) + "\n")
    if train:
        train_path = config_dir / "config_train.json"
        train_config = json.loads(train_path.read_text())
        train_config.update(train)
        train_path.write_text(json.dumps(train_config, indent=2) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--server", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--force", action="store_true", help="replace an existing target folder not made by this tool")
    args = parser.parse_args(argv)
    try:
        target = make_variant(args.source, args.target, parse_assignments(args.server),
                              parse_assignments(args.train), args.force)
    except (VariantError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"job variant written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

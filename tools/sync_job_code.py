"""Link the project's package into every job: ``jobs/<job>/app/custom/medfl/**`` -> ``custom/medfl/**``.

NVFlare ships a job's code from ``<job>/app/custom``. A symlinked *folder* there is packaged empty, but
symlinked *files* are copied, so each job holds one relative symlink per source file: one source of truth,
no copies to drift, and the simulator and ``nvflare job submit`` both see the real code.

    python tools/sync_job_code.py          # create / refresh the links (run after adding or removing a file)
    python tools/sync_job_code.py --check  # exit 1 and list differences (used by the tests)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "custom" / "medfl"


def source_files() -> List[Path]:
    """Python files of the package, relative to ``custom/``."""
    return sorted(p.relative_to(PACKAGE.parent) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def job_dirs() -> List[Path]:
    return sorted(p for p in (ROOT / "jobs").iterdir() if (p / "meta.json").is_file())


def differences(job: Path) -> List[str]:
    """What in ``job``'s ``app/custom`` does not mirror ``custom/`` (empty when in sync)."""
    custom = job / "app" / "custom"
    expected = set(source_files())
    present = {p.relative_to(custom) for p in custom.rglob("*.py") if "__pycache__" not in p.parts} if custom.is_dir() else set()
    problems = [f"{job.name}: missing {p}" for p in sorted(expected - present)]
    problems += [f"{job.name}: extra {p}" for p in sorted(present - expected)]
    for rel in sorted(expected & present):
        link = custom / rel
        if not link.is_symlink():
            kind = "a copy that differs from" if link.read_bytes() != (PACKAGE.parent / rel).read_bytes() else "a copy of"
            problems.append(f"{job.name}: {rel} is {kind} custom/{rel} (must be a link)")
        elif link.resolve() != (PACKAGE.parent / rel).resolve():
            problems.append(f"{job.name}: {rel} links to {os.readlink(link)}, not custom/{rel}")
    return problems


def sync(job: Path) -> None:
    custom = job / "app" / "custom"
    expected = set(source_files())
    if custom.is_dir():
        for path in sorted(custom.rglob("*"), reverse=True):
            rel = path.relative_to(custom)
            if path.is_symlink() or path.is_file():
                if rel not in expected or not path.is_symlink():
                    path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    for rel in expected:
        link = custom / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(PACKAGE.parent / rel, link.parent)
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args(argv)
    problems: Dict[str, List[str]] = {}
    for job in job_dirs():
        if not args.check:
            sync(job)
        problems[job.name] = differences(job)
    found = [p for ps in problems.values() for p in ps]
    for line in found:
        print(line)
    if not found:
        print(f"{len(problems)} jobs mirror custom/medfl ({len(source_files())} files)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

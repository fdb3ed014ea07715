"""Copy a job with some settings changed, e.g. a short demo or test run of a job whose defaults are the paper's.

    python tools/job_variant.py jobs/fedsm_prostate workspaces/jobs/fedsm_prostate \
        --server num_rounds=5 --train local_epochs=2 num_threads=1

``--server KEY=VALUE`` sets an argument of every server workflow that already has it; ``--train KEY=VALUE``
sets a key of ``config_train.json``. Values are JSON (``5``, ``true``, ``"text"``) or plain strings. The
copy follows the links of ``app/custom``, so it is a self-contained job folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, List


def parse_assignments(pairs: List[str]) -> Dict[str, object]:
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: expected KEY=VALUE, got {pair!r}")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def make_variant(source: Path, target: Path, server: Dict[str, object], train: Dict[str, object],
                 keep_links: bool = False) -> Path:
    """Copy ``source`` to ``target`` (replacing it) and apply the overrides; return ``target``.

    With ``keep_links`` the code in ``app/custom`` stays symlinked (re-pointed to absolute paths), as in the
    repository's own job folders; otherwise the files are copied.
    """
    if not (source / "meta.json").is_file():
        raise SystemExit(f"error: {source} is not a job folder (no meta.json)")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, symlinks=keep_links, ignore=shutil.ignore_patterns("__pycache__"))
    if keep_links:
        for link in (p for p in (target / "app" / "custom").rglob("*") if p.is_symlink()):
            real = (source / link.relative_to(target)).resolve()
            link.unlink()
            link.symlink_to(real)
    config_dir = target / "app" / "config"
    server_path = config_dir / "config_fed_server.json"
    config = json.loads(server_path.read_text())
    for key, value in server.items():
        workflows = [w for w in config.get("workflows", []) if key in w.get("args", {})]
        if not workflows:
            raise SystemExit(f"error: no workflow of {server_path} has an argument '{key}'")
        for workflow in workflows:
            workflow["args"][key] = value
    server_path.write_text(json.dumps(config, indent=2) + "\n")
    if train:
        train_path = config_dir / "config_train.json"
        train_config = json.loads(train_path.read_text())
        train_config.update(train)
        train_path.write_text(json.dumps(train_config, indent=2) + "\n")
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--server", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    target = make_variant(args.source, args.target, parse_assignments(args.server), parse_assignments(args.train))
    print(f"job variant written to {target}")


if __name__ == "__main__":
    sys.exit(main())

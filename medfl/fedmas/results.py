"""Balanced accuracy per client and pooled for FedMAS vs BSM-FL vs FedAvg, from their workspaces.

    python result_stat/fedmas_results.py --fedmas workspaces/fedmas_isic2019 \
        --bsm_fl workspaces/fedavg_bsm_isic2019 --fedavg workspaces/fedavg_isic2019

Each argument is a simulator workspace (or any folder holding one ``balanced_accuracy.json``, or that file),
written every round by ``medfl.fedmas.controller.FedMASController``. The numbers are the clients' test-split
balanced accuracies of the global model, in %, pooled from per-class counts (the pooled test set of the
original). Three tables: the model selected on the validation splits (``best_global_model.pt``, the
project's result), the final model (``last_global_model.pt``), and the model selected on the test splits as
the original code does (optimistic, for comparison with the paper only).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

HISTORY_FILE = "balanced_accuracy.json"  # medfl.fedmas.controller.HISTORY_FILE (not imported: no torch here)
SELECTIONS = (
    ("validation_selected", "model selected on validation (best_global_model.pt)"),
    ("last", "final model (last_global_model.pt)"),
    ("test_selected", "model selected on the TEST split, the original's protocol: optimistic "
                      "(best_test_selected_global_model.pt)"),
)
METHODS = (("fedmas", "FedMAS"), ("bsm_fl", "BSM-FL"), ("fedavg", "FedAvg"))
PERCENT = 100.0


def find_history(path: Path) -> Path:
    """``path`` itself if it is a file, else the one ``balanced_accuracy.json`` below it."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise SystemExit(f"error: {path}: no such file or folder")
    found = sorted(path.rglob(HISTORY_FILE))
    if len(found) != 1:
        raise SystemExit(f"error: {path}: expected one {HISTORY_FILE} below it, found {len(found)}: "
                         f"{[str(p) for p in found]}")
    return found[0]


def load_selected(path: Path) -> Dict[str, dict]:
    """The ``selected`` records (validation_selected, last, test_selected) of a server history file."""
    try:
        content = json.loads(path.read_text())
        selected = content["selected"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {path}: not a FedMAS server history ({e})") from None
    if not selected:
        raise SystemExit(f"error: {path}: no round finished yet")
    return selected


def _percent(value: Optional[float]) -> str:
    return "-" if value is None or math.isnan(value) else f"{PERCENT * value:.1f}"


def format_table(title: str, rows: Dict[str, dict]) -> str:
    """One table: a row per method (``{method: record}``), a column per client, then pooled."""
    clients = sorted({client for record in rows.values() for client in record["clients"]})
    header = ["method", "round", *clients, "pooled"]
    body = [[method, str(record["round"]),
             *(_percent(record["clients"].get(c, {}).get("testing")) for c in clients),
             _percent(record["pooled"]["testing"])]
            for method, record in rows.items()]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
              for row in body]
    return "\n".join(lines)


def report(histories: Dict[str, Path]) -> str:
    """The three tables for ``{method name: history file}``."""
    selected = {method: load_selected(path) for method, path in histories.items()}
    tables = []
    for key, label in SELECTIONS:
        rows = {method: records[key] for method, records in selected.items()}
        tables.append(format_table(f"Balanced accuracy (%) on the test splits, {label}:", rows))
    return "\n\n".join(tables)


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for option, name in METHODS:
        parser.add_argument(f"--{option}", type=Path, help=f"workspace of the {name} job")
    args = parser.parse_args(argv)
    histories = {name: find_history(getattr(args, option)) for option, name in METHODS if getattr(args, option)}
    if not histories:
        parser.error("give at least one of --fedmas, --bsm_fl, --fedavg")
    text = report(histories)
    print(text)
    return text


if __name__ == "__main__":
    main()

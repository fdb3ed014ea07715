"""Results table (markdown and CSV) and validation curves (PNG) of a comparison on one federation.

Scores come as ``{method: [ {site: metric}, ... one dict per seed ]}``. The table has one row per method, one
column per site and a ``mean`` column (the unweighted mean over sites); with more than one seed each cell is
``mean ± std`` over seeds (sample standard deviation). The CSV holds the same in long form:
``method,site,mean,std,seeds``. A comparison reporting several metrics writes one table per metric.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from medfl.common.io import atomic_path

MEAN = "mean"
Scores = Mapping[str, Sequence[Mapping[str, float]]]
Curves = Mapping[str, Tuple[Sequence[float], Sequence[float]]]


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarise(scores: Scores) -> Tuple[List[str], Dict[str, Dict[str, Tuple[float, float, int]]]]:
    """``(sites, {method: {site or "mean": (mean, std, seeds)}})``; every run must cover the same sites."""
    sites: List[str] = []
    for method, runs in scores.items():
        if not runs:
            raise ValueError(f"{method}: no runs to summarise")
        for run in runs:
            sites = sites or sorted(run)
            if sorted(run) != sites:
                raise ValueError(f"{method}: sites {sorted(run)} differ from {sites}")
    table = {}
    for method, runs in scores.items():
        row = {site: (*mean_std([run[site] for run in runs]), len(runs)) for site in sites}
        row[MEAN] = (*mean_std([sum(run.values()) / len(run) for run in runs]), len(runs))
        table[method] = row
    return sites, table


def _cell(mean: float, std: float, seeds: int, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if seeds > 1 else f"{mean:.{digits}f}"


def markdown_table(scores: Scores, digits: int = 4) -> str:
    sites, table = summarise(scores)
    lines = ["| method | " + " | ".join(sites + [MEAN]) + " |", "|---" * (len(sites) + 2) + "|"]
    for method, row in table.items():
        lines.append(f"| {method} | " + " | ".join(_cell(*row[c], digits) for c in sites + [MEAN]) + " |")
    return "\n".join(lines) + "\n"


def write_results(scores: Scores, output_dir: Path, name: str, caption: str = "", digits: int = 4) -> Tuple[Path, Path]:
    """Write ``<name>.md`` (``caption`` above the table) and ``<name>.csv`` into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown, table_csv = output_dir / f"{name}.md", output_dir / f"{name}.csv"
    with atomic_path(markdown) as tmp:
        Path(tmp).write_text((caption + "\n\n" if caption else "") + markdown_table(scores, digits))
    sites, table = summarise(scores)
    with atomic_path(table_csv) as tmp, open(tmp, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["method", "site", "mean", "std", "seeds"])
        for method, row in table.items():
            for column in sites + [MEAN]:
                mean, std, seeds = row[column]
                writer.writerow([method, column, f"{mean:.6f}", f"{std:.6f}", seeds])
    return markdown, table_csv


def plot_curves(curves: Curves, output: Path, ylabel: str, xlabel: str = "epochs of local training") -> Path:
    """One line per method: ``{method: (x, y)}``."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, (x, y) in curves.items():
        ax.plot(list(x), list(y), marker=".", label=method)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return output


def method_means(scores: Scores) -> Dict[str, float]:
    """Each method's mean over sites and seeds."""
    return {m: sum(sum(run.values()) / len(run) for run in runs) / len(runs) for m, runs in scores.items()}


def report(scores: Scores, curves: Curves, walls: Mapping[str, Sequence[float]], output_dir: Path, name: str,
           caption: str, ylabel: str, more: Optional[Mapping[str, Tuple[str, Scores]]] = None) -> Dict[str, float]:
    """Write ``<name>_results.{md,csv}`` (``scores`` under ``caption``), ``<name>_<metric>_results.{md,csv}`` for
    each ``{metric: (caption, scores)}`` of ``more`` (other metrics of the same runs) and ``<name>_validation.png``;
    print each table under its caption, the simulator wall times and the files; return :func:`method_means` of
    ``scores`` (for the figure a command prints last)."""
    tables = {f"{name}_results": (caption, scores)}
    tables.update({f"{name}_{metric}_results": table for metric, table in (more or {}).items()})
    written = []
    for file_name, (text, table) in tables.items():
        written += write_results(table, output_dir, file_name, text)
        print(text)
        print(markdown_table(table))
    written.append(plot_curves(curves, output_dir / f"{name}_validation.png", ylabel))
    print("simulator wall time: " + ", ".join(f"{job} {sum(w) / len(w):.0f} s" for job, w in walls.items()))
    print("written: " + ", ".join(map(str, written)))
    return method_means(scores)

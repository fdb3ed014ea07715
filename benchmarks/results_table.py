"""Results table (markdown and CSV) and validation curves (PNG) of a comparison on one federation.

Scores come as ``{method: [ {site: metric}, ... one dict per seed ]}``. The table has one row per method, one
column per site and a ``mean`` column (the unweighted mean over sites); with more than one seed each cell is
``mean ± std`` over seeds (sample standard deviation). The CSV holds the same in long form:
``method,site,mean,std,seeds``. A comparison reporting several metrics writes one table per metric.

Single-seed runs made apart (e.g. one seed per command) are merged into the multi-seed table with

    python benchmarks/results_table.py combine --name NAME --output DIR --caption TEXT run1.csv run2.csv ...

(each CSV one seed of every method, all over the same sites; scores as the CSVs hold them, 6 decimals).
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from medfl.common.io import atomic_path

MEAN = "mean"
CSV_COLUMNS = ["method", "site", "mean", "std", "seeds"]
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
        writer.writerow(CSV_COLUMNS)
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


def read_single_seed(path: Path) -> Dict[str, Dict[str, float]]:
    """``{method: {site: score}}`` of a single-seed results CSV of :func:`write_results`; its ``mean`` rows are left
    out (:func:`summarise` computes them again). A row of more than one seed is an error naming the file."""
    runs: Dict[str, Dict[str, float]] = {}
    with open(path, newline="") as table:
        reader = csv.DictReader(table)
        if reader.fieldnames != CSV_COLUMNS:
            raise ValueError(f"{path}: columns {reader.fieldnames}, expected {CSV_COLUMNS}")
        for row in reader:
            if int(row["seeds"]) != 1:
                raise ValueError(f"{path}: {row['method']} is a mean over {row['seeds']} seeds; combine merges "
                                 "single-seed tables only")
            if row["site"] != MEAN:
                runs.setdefault(row["method"], {})[row["site"]] = float(row["mean"])
    if not runs:
        raise ValueError(f"{path}: no results")
    return runs


def combine(paths: Sequence[Path]) -> Dict[str, List[Dict[str, float]]]:
    """The :data:`Scores` of single-seed results CSVs, one run per file for each method in it; every method of
    every file must cover the first file's sites (an error names the file that does not)."""
    scores: Dict[str, List[Dict[str, float]]] = {}
    sites: List[str] = []
    for path in paths:
        for method, run in read_single_seed(path).items():
            sites = sites or sorted(run)
            if sorted(run) != sites:
                raise ValueError(f"{path}: {method} has the sites {sorted(run)}, {paths[0]} has {sites}")
            scores.setdefault(method, []).append(run)
    return scores


def main(argv: Optional[Sequence[str]] = None) -> Tuple[Path, Path]:
    """``combine``: write the multi-seed table (:func:`write_results`) of single-seed results CSVs and print it; a
    file that cannot be combined exits with status 2 and a message naming it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("combine", help="merge single-seed results CSVs into one multi-seed table")
    merge.add_argument("--name", required=True, help="the table's file name, without .md / .csv")
    merge.add_argument("--output", type=Path, required=True, help="the folder of the table")
    merge.add_argument("--caption", default="", help="the text above the markdown table")
    merge.add_argument("csvs", type=Path, nargs="+", help="single-seed results CSVs (method,site,mean,std,seeds)")
    args = parser.parse_args(argv)
    try:
        scores = combine(args.csvs)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    written = write_results(scores, args.output, args.name, args.caption)
    print(markdown_table(scores))
    print("written: " + ", ".join(map(str, written)))
    return written


if __name__ == "__main__":
    main()

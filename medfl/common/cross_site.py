"""The cross-site matrix: every final model of a run (rows) scored on every site's data (columns).

:func:`write_cross_site` writes it beside the server's checkpoints, atomically, in four forms:

* ``cross_site.json``: NVFlare's cross-site layout (``cross_val_results.json`` of ``CrossSiteModelEval``),
  ``{data site: {model: {metric: score}}}``, so readers of NVFlare's file read this one too;
* ``cross_site.csv`` and ``cross_site.md``: one row per model, one column per site and the unweighted mean over
  the sites;
* ``cross_site.png``: the same as a heatmap.

:func:`read_cross_site` reads the JSON back as ``(metric, {model: {site: score}})``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

from .errors import DataError
from .io import PathLike, atomic_path

STEM = "cross_site"
MEAN = "mean"
Matrix = Dict[str, Dict[str, float]]  # {model: {site: score}}


def _sites(matrix: Matrix) -> List[str]:
    return sorted({site for row in matrix.values() for site in row})


def _mean(row: Dict[str, float]) -> float:
    values = [v for v in row.values() if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def as_table(matrix: Matrix) -> Tuple[List[str], List[List[str]]]:
    """Header (``model``, the sites, ``mean``) and one row of 4-decimal scores per model, in ``matrix`` order."""
    sites = _sites(matrix)
    rows = [[model, *(f"{row[s]:.4f}" if s in row else "" for s in sites), f"{_mean(row):.4f}"]
            for model, row in matrix.items()]
    return ["model", *sites, MEAN], rows


def as_markdown(matrix: Matrix, metric: str) -> str:
    header, rows = as_table(matrix)
    lines = [f"Cross-site {metric} (rows: final models; columns: the site whose data scored them)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _write_heatmap(matrix: Matrix, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites, models = _sites(matrix), list(matrix)
    values = [[matrix[m].get(s, math.nan) for s in sites] for m in models]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(sites), 1.0 + 0.55 * len(models)))
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(sites)), sites, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    ax.set_xlabel("data of site")
    ax.set_title(f"cross-site {metric}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_cross_site(matrix: Matrix, metric: str, folder: PathLike) -> List[Path]:
    """Write ``cross_site.{json,csv,md,png}`` of ``matrix`` (``{model: {site: score}}``) into ``folder``."""
    folder = Path(folder)
    by_site: Dict[str, Dict[str, Dict[str, float]]] = {}
    for model, row in matrix.items():
        for site, score in row.items():
            by_site.setdefault(site, {})[model] = {metric: score}
    paths = [folder / f"{STEM}.{suffix}" for suffix in ("json", "csv", "md", "png")]
    _write_text(json.dumps({site: by_site[site] for site in sorted(by_site)}, indent=2) + "\n", paths[0])
    header, rows = as_table(matrix)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    _write_text(buffer.getvalue(), paths[1])
    _write_text(as_markdown(matrix, metric), paths[2])
    _write_heatmap(matrix, metric, paths[3])
    return paths


def read_cross_site(folder: PathLike) -> Tuple[str, Matrix]:
    """``(metric, {model: {site: score}})`` from ``<folder>/cross_site.json``."""
    path = Path(folder) / f"{STEM}.json"
    try:
        by_site = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("no cross-site results (was the run made with cross_site_evaluation?)", path=path) from None
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e})", path=path) from None
    matrix: Matrix = {}
    metrics = set()
    for site, models in sorted(by_site.items()):
        for model, scores in models.items():
            metrics.update(scores)
            matrix.setdefault(model, {})[site] = next(iter(scores.values()))
    if len(metrics) != 1:
        raise DataError(f"expected one metric, found {sorted(metrics)}", path=path)
    return metrics.pop(), matrix

"""Plot the clients' validation curves from an NVFlare simulator workspace (the metrics the clients streamed to
the server), smoothed like TensorBoard (exponential moving average, weight 0.8 by default).

    python result_stat/plot_tensorboard_events.py --workspace /tmp/nvflare/fedsm_prostate \
        [--tags val/global val/personal val/selector] [--output results/fedsm_prostate_val.png] \
        [--tracking auto|tensorboard|mlflow]

The server's receiver wrote them either as TensorBoard events, ``<workspace>/server/simulate_job/tb_events/<client>/``
(NVFlare 2.9 layout, the jobs' default), or into an MLflow store, ``<workspace>/server/simulate_job/mlflow.db``
(SQLite; one MLflow run per client; a recipe with ``tracking="mlflow"``). Both hold the same curves under the same
names (``val/global`` ...); ``auto`` reads the TensorBoard events when there are client folders, else the MLflow
store. One panel per tag, one line per client. Prints the path of the PNG.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

Curve = Tuple[List[int], List[float]]
TB_EVENTS = "tb_events"
MLFLOW_STORE = "mlflow.db"  # NVFlare's MLflowReceiver default: <job result folder>/mlflow.db
SERVER = "server"


def smooth(values: Sequence[float], weight: float = 0.8) -> List[float]:
    """TensorBoard's smoothing: ``s_t = weight * s_{t-1} + (1 - weight) * v_t``, starting at ``v_0``."""
    out, last = [], None
    for v in values:
        last = v if last is None else weight * last + (1 - weight) * v
        out.append(last)
    return out


def read_curves(events_dir: Path) -> Dict[str, Dict[str, Curve]]:
    """``{client: {tag: (steps, values)}}`` of every event folder under ``events_dir`` (server excluded)."""
    curves = {}
    for client_dir in sorted(p for p in events_dir.iterdir() if p.is_dir() and p.name != SERVER):
        acc = EventAccumulator(str(client_dir))
        acc.Reload()
        curves[client_dir.name] = {
            tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
            for tag in acc.Tags()["scalars"]
        }
    return curves


def run_site(run_name: str, job_id_tag: str) -> str:
    """The client of an MLflow run that NVFlare's ``MLflowReceiver`` named ``<site>-<job id[:6]>-<job>-<run name>``."""
    marker = f"-{job_id_tag[:6]}-"
    return run_name[:run_name.index(marker)] if job_id_tag and marker in run_name else run_name


def read_mlflow_curves(store: Path) -> Dict[str, Dict[str, Curve]]:
    """``{client: {metric: (steps, values)}}`` of every run of the MLflow SQLite store ``store``, by step."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        sys.exit(f"error: {store}: reading an MLflow store needs mlflow ({e}): pip install 'medfl[tracking]'")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=f"sqlite:///{Path(store).resolve()}")
    curves: Dict[str, Dict[str, Curve]] = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            tags = run.data.tags
            site = run_site(tags.get("run_name", run.info.run_name), tags.get("job_id", ""))
            for metric in sorted(run.data.metrics):
                history = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)
                curves.setdefault(site, {})[metric] = ([m.step for m in history], [m.value for m in history])
    return dict(sorted(curves.items()))


def read_run_curves(run_dir: Path, tracking: str = "auto") -> Dict[str, Dict[str, Curve]]:
    """The clients' curves of a server run folder (``<workspace>/server/simulate_job``) from its TensorBoard events
    or its MLflow store (``tracking``: ``tensorboard``, ``mlflow`` or ``auto``, see the module docstring)."""
    events, store = run_dir / TB_EVENTS, run_dir / MLFLOW_STORE
    has_events = events.is_dir() and any(p.is_dir() and p.name != SERVER for p in events.iterdir())
    if tracking == "tensorboard" or (tracking == "auto" and has_events):
        if not has_events:
            sys.exit(f"error: {events}: no clients' TensorBoard events (is this a simulator workspace?)")
        return read_curves(events)
    if not store.is_file():
        sys.exit(f"error: {run_dir}: neither clients' TensorBoard events ({TB_EVENTS}/) nor an MLflow store "
                 f"({MLFLOW_STORE}); is this a simulator workspace?")
    return read_mlflow_curves(store)


def plot(curves: Dict[str, Dict[str, Curve]], tags: Sequence[str], output: Path, weight: float) -> Path:
    fig, axes = plt.subplots(1, len(tags), figsize=(5 * len(tags), 4), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        for client, client_curves in curves.items():
            if tag in client_curves:
                steps, values = client_curves[tag]
                ax.plot(steps, smooth(values, weight), label=client)
        ax.set_title(tag)
        ax.set_xlabel("round")
        ax.legend(fontsize=8)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True, help="the simulator workspace (-w)")
    parser.add_argument("--tags", nargs="*", default=None, help="scalar tags to plot (default: every val/ tag)")
    parser.add_argument("--smoothing", type=float, default=0.8)
    parser.add_argument("--output", type=Path, default=None, help="PNG path (default: <workspace>/val_curves.png)")
    parser.add_argument("--tracking", choices=("auto", "tensorboard", "mlflow"), default="auto",
                        help="where the server's receiver wrote the curves (default: whichever the run has)")
    args = parser.parse_args(argv)
    run_dir = args.workspace / SERVER / "simulate_job"
    curves = read_run_curves(run_dir, args.tracking)
    tags = args.tags or sorted({t for c in curves.values() for t in c if t.startswith("val/")})
    if not tags:
        sys.exit(f"error: {run_dir}: no validation scalars found")
    output = plot(curves, tags, args.output or args.workspace / "val_curves.png", args.smoothing)
    print(f"validation curves written to {output}")
    return output


if __name__ == "__main__":
    main()

"""Plot the clients' validation curves from an NVFlare simulator workspace (TensorBoard events streamed to
the server), smoothed like TensorBoard (exponential moving average, weight 0.8 by default).

    python result_stat/plot_tensorboard_events.py --workspace /tmp/nvflare/fedsm_prostate \
        [--tags val/global val/personal val/selector] [--output results/fedsm_prostate_val.png]

Events are read from ``<workspace>/server/simulate_job/tb_events/<client>/`` (NVFlare 2.9 layout). One panel
per tag, one line per client. Prints the path of the PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

Curve = Tuple[List[int], List[float]]


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
    for client_dir in sorted(p for p in events_dir.iterdir() if p.is_dir() and p.name != "server"):
        acc = EventAccumulator(str(client_dir))
        acc.Reload()
        curves[client_dir.name] = {
            tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
            for tag in acc.Tags()["scalars"]
        }
    return curves


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
    args = parser.parse_args(argv)
    events_dir = args.workspace / "server" / "simulate_job" / "tb_events"
    if not events_dir.is_dir():
        sys.exit(f"error: {events_dir}: no TensorBoard events (is this a simulator workspace?)")
    curves = read_curves(events_dir)
    tags = args.tags or sorted({t for c in curves.values() for t in c if t.startswith("val/")})
    if not tags:
        sys.exit(f"error: {events_dir}: no validation scalars found")
    output = plot(curves, tags, args.output or args.workspace / "val_curves.png", args.smoothing)
    print(f"validation curves written to {output}")
    return output


if __name__ == "__main__":
    main()

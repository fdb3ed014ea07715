"""FedSM vs FedAvg on the demo prostate federation: test Dice per site, selector accuracy, moment sync on/off,
and peak memory of each simulator run (3 clients, CPU).

    python benchmarks/bench_fedsm_prostate.py [--rounds 20] [--work /tmp/bench_fedsm]

Runs, on the same prepared demo data and seed: FedAvg, FedSM (moment filters on, as the job ships), and FedSM
with the filter pair removed from config_fed_client.json. Prints one table; the last line is the figure to
track: the mean super-model Dice minus FedAvg's, and FedSM's peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

from simrun import run_job

from medfl.federations.prostate2d.demo import make_demo_federation
from medfl.federations.prostate2d.preparation import prepare
from medfl.fedsm import testing as prostate_2d_test_only

CLIENTS = ("client_I2CVB", "client_MSD", "client_NCI_ISBI_3T")


def test_scores(app_server: Path, data: Path, threshold: float) -> dict:
    """``{client: {"global", "super", "selector_accuracy": ...}}`` of a FedAvg or FedSM run's best models."""
    with contextlib.redirect_stdout(io.StringIO()):
        return prostate_2d_test_only.main(["--models_dir", str(app_server), "--data_root",
                                           str(data / "dataset_2D"), "--datalist", str(data / "datalist_2D"),
                                           "--select_threshold", str(threshold)]).sites


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, help="slice size of the demo federation")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_fedsm"))
    args = parser.parse_args(argv)
    data = args.work / "data"
    if not (data / "datalist_2D" / "client_All.json").is_file():
        make_demo_federation(data / "raw")
        prepare(data / "raw", data, source="saml", size=args.size)
    server, train = {"num_rounds": args.rounds}, {"num_threads": 1}

    runs = {
        "FedAvg": run_job("fedavg_prostate", args.work / "fedavg", CLIENTS, data, server, train),
        "FedSM": run_job("fedsm_prostate", args.work / "fedsm", CLIENTS, data, server, train),
        "FedSM, no moment sync": run_job("fedsm_prostate", args.work / "nosync", CLIENTS, data, server, train,
                                         edit_client_config=remove_moment_filters),
    }
    print(f"demo prostate federation, {args.rounds} rounds, {args.size}x{args.size} slices, 3 clients, CPU")
    print("super@0.9: the super model with the paper's threshold; super@argmax: every image routed to the "
          "personalised model of the selector's top site (threshold 0)")
    print(f"{'run':24s} {'site':20s} {'global':>8s} {'super@0.9':>10s} {'super@argmax':>13s} {'selector':>9s}")
    nan = float("nan")
    means = {}
    for name, run in runs.items():
        paper, argmax = test_scores(run.app_server, data, 0.9), test_scores(run.app_server, data, 0.0)
        rows = {site: (s["global"], s.get("super", nan), argmax[site].get("super", nan), s.get("selector_accuracy", nan))
                for site, s in paper.items()}
        rows["mean"] = tuple(sum(r[i] for r in rows.values()) / len(rows) for i in range(4))
        for site, (g, sp, sa, acc) in rows.items():
            print(f"{name:24s} {site:20s} {g:8.4f} {sp:10.4f} {sa:13.4f} {acc:9.3f}")
        means[name] = dict(zip(("global", "super", "super_argmax", "selector"), rows["mean"]))
        print(f"{name:24s} wall {run.wall_s:6.1f} s, peak RSS {run.peak_rss_bytes / 2**30:.2f} GiB")
    gain = means["FedSM"]["super"] - means["FedAvg"]["global"]
    gain_argmax = means["FedSM"]["super_argmax"] - means["FedAvg"]["global"]
    print(f"FedSM super-model mean Dice - FedAvg global mean Dice: {gain:+.4f} (threshold 0.9), "
          f"{gain_argmax:+.4f} (argmax routing); selector accuracy {means['FedSM']['selector']:.3f} with moment sync, "
          f"{means['FedSM, no moment sync']['selector']:.3f} without; "
          f"FedSM peak memory {runs['FedSM'].peak_rss_bytes / 2**30:.2f} GiB (all sites together; per-site ratios: bench_memory.py)")


MOMENT_FILTERS = "medfl.fedsm.moments."  # the module of the Adam-moment filter pair


def remove_moment_filters(client_config: dict) -> None:
    """The FedSM job without its Adam-moment filter pair: moment sync off, nothing else changed (the filters that
    send large arrays in pieces stay); a filter chain left empty is dropped."""
    for chains in ("task_data_filters", "task_result_filters"):
        kept = []
        for chain in client_config.get(chains, []):
            filters = [f for f in chain["filters"] if not f["path"].startswith(MOMENT_FILTERS)]
            if filters:
                kept.append({**chain, "filters": filters})
        client_config[chains] = kept


if __name__ == "__main__":
    main()

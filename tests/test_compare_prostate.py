"""End-to-end: the prostate comparison command (benchmarks/compare_prostate.py) for one tiny round on the demo
federation: every method's row, HarmoFL's included, with a finite test Dice per site, and its summary lines."""

import csv
import json
import math

import pytest
from conftest import PROSTATE_CLIENTS, PROSTATE_TRAIN, SMALL_SELECTOR
from helpers import run
from test_deploy_poc import TINY_UNET

pytestmark = pytest.mark.bench  # make test-bench

METHODS = ("FedAvg", "FedSM (super model)", "FedSM (global model)", "HarmoFL", "local only", "centralised")


def test_compare_prostate_has_a_harmofl_row(tmp_path, demo_prostate):
    out = run(["python", "benchmarks/compare_prostate.py", "--data", demo_prostate, "--rounds", "1", "--seeds", "0",
               "--train", json.dumps({"network": TINY_UNET, **PROSTATE_TRAIN}),
               "--job-train", "fedsm_prostate", json.dumps({"selector_network": SMALL_SELECTOR}),
               "--work", tmp_path], timeout=900).stdout
    results = tmp_path / "results"
    with open(results / "prostate_results.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    scores = {(row["method"], row["site"]): float(row["mean"]) for row in rows}
    for method in METHODS:
        for site in (*PROSTATE_CLIENTS, "mean"):
            assert math.isfinite(scores[method, site]) and 0 <= scores[method, site] <= 1, (method, site, out)
    assert "| HarmoFL |" in (results / "prostate_results.md").read_text()
    assert (results / "prostate_validation.png").stat().st_size > 0
    harmofl_line, last_line = out.strip().splitlines()[-2:]
    label, gap = harmofl_line.split(": ")
    assert label == "HarmoFL mean test Dice - FedAvg", out
    assert float(gap) == pytest.approx(scores["HarmoFL", "mean"] - scores["FedAvg", "mean"], abs=1e-4), out
    assert last_line.startswith("FedSM super-model mean test Dice - FedAvg: "), out


def test_job_overrides_name_the_unknown_job_or_the_bad_json():
    from compare_prostate import job_overrides

    assert job_overrides([("fedsm_prostate", '{"seed": 1}')]) == {"fedsm_prostate": {"seed": 1}}
    with pytest.raises(SystemExit, match="unknown job 'fedsm'"):
        job_overrides([("fedsm", "{}")])
    with pytest.raises(SystemExit, match="fedsm_prostate: expected a JSON object"):
        job_overrides([("fedsm_prostate", "[1]")])

"""The benchmark and comparison commands run from the command line on their demo federations at a tiny budget,
write what they promise and print their figure last (``make test-bench``)."""

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROSTATE_CLIENTS, SMALL_SELECTOR

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.bench

NUMBER = r"[-+]?\d+(?:\.\d+)?"


def run_command(script: str, *args) -> str:
    """Run ``benchmarks/<script>`` with the project's interpreter; return its output; fail with it on error."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def read_table(path: Path) -> dict:
    """``{method: {site: mean}}`` of a results CSV."""
    table = {}
    with open(path, newline="") as rows:
        for row in csv.DictReader(rows):
            table.setdefault(row["method"], {})[row["site"]] = float(row["mean"])
    return table


def test_compare_medmnist_writes_the_table_and_curves(tmp_path, shared_data):
    from compare_medmnist import demo_medmnist

    data = demo_medmnist(tmp_path / "data", clients=3, shared_data=shared_data)
    out = run_command("compare_medmnist.py", "--data", data, "--clients", 3, "--rounds", 1, "--work", tmp_path)
    results = tmp_path / "results"
    table = read_table(results / "medmnist_results.csv")
    assert set(table) == {"FedAvg", "local only", "centralised"}
    for method, row in table.items():
        assert len(row) == 4 and all(0 <= value <= 1 for value in row.values()), (method, row)
    assert (results / "medmnist_results.md").read_text().count("| FedAvg |") == 1
    assert (results / "medmnist_validation.png").read_bytes()[:4] == b"\x89PNG"
    assert re.fullmatch(rf"FedAvg mean test accuracy - local only: {NUMBER}", last_line(out)), out


def test_flower_benchmark_runs_the_seed_job_on_the_nvflare_side(tmp_path, shared_data):
    """The NVFlare half of bench_flower_vs_nvflare_medmnist.py (the Flower half needs its own venv, see its
    docstring): the seed job's defaults on 3 BreastMNIST clients, accuracy and AUC per round."""
    from compare_medmnist import demo_medmnist

    medmnist = demo_medmnist(tmp_path / "data", clients=3, shared_data=shared_data) / "medmnist"
    out = run_command("bench_flower_vs_nvflare_medmnist.py", "--side", "nvflare", "--dataset", "breastmnist",
                      "--npz", medmnist / "breastmnist.npz", "--splits", medmnist / "splits_breastmnist",
                      "--nvflare", Path(sys.executable).with_name("nvflare"), "--workdir", tmp_path / "bench")
    assert "breastmnist: 3 clients, 2 rounds of 2 local epochs, fraction_fit 1.0" in out, out
    assert re.search(rf"^nvflare: per-round wall time \[s\]: {NUMBER}  {NUMBER}  \(mean", out, re.M), out
    for metric in ("accuracy", "AUC"):
        assert re.search(rf"^nvflare: server test {metric} per round \(0 = initial\): {NUMBER}  {NUMBER}  {NUMBER}$",
                         out, re.M), out


def test_array_transfer_benchmark_prints_both_ends_of_both_directions():
    out = run_command("bench_array_transfer.py", "--arrays", 2, "--mib", 4, "--piece-mib", 1)
    assert re.fullmatch(rf"\s*1 MiB(\s+{NUMBER}){{4}}", last_line(out)), out


def test_fedsm_client_memory_benchmark_prints_every_stage_of_each_round(tmp_path):
    out = run_command("bench_fedsm_client_memory.py", "--selector", "selector_cnn", "--rounds", 2, "--images", 4,
                      "--piece-bytes", 2 ** 16, "--work", tmp_path)  # the small selector's largest layers in pieces
    rows = re.findall(rf"^\s+(\d+) (.+?)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})$", out, re.M)
    stages = {(round_name, stage.strip()) for round_name, stage, *_ in rows}
    for round_name in ("0", "1"):
        for stage in ("receive task (download)", "task data filter (join pieces)", "load_payload",
                      "selector: Adam step", "check_update", "task result filter (cut pieces)",
                      "send result (upload)", "after send (release)"):
            assert (round_name, stage) in stages, (round_name, stage, out)
    assert all(float(peak) >= float(end) > 0 for *_, peak, end, _ in rows), out
    assert re.fullmatch(rf"FedSM client peak RSS / bytes held: {NUMBER}x in round \d at '.+' \({NUMBER} GiB for "
                        rf"{NUMBER} GiB; goal <= 1.3x\)", last_line(out)), out


def test_memory_benchmark_covers_every_job():
    from bench_memory import JOBS

    assert set(JOBS) == {job.name for job in (ROOT / "jobs").iterdir() if (job / "meta.json").is_file()}


def test_memory_benchmark_reports_the_peak_of_a_three_client_run(tmp_path):
    out = run_command("bench_memory.py", "--jobs", "fedsm_prostate", "--work", tmp_path)
    row = re.search(rf"^fedsm_prostate\s+3\s+\d+\s+({NUMBER})$", out, re.M)
    assert row and 0.2 < float(row[1]) < 24, out  # GiB summed over the process tree; the machine has 24 GB
    for site in ("server", *PROSTATE_CLIENTS):
        assert re.search(rf"^FedSM {site}\s+peak\s+{NUMBER} GiB, must hold\s+{NUMBER} GiB: {NUMBER}x "
                         rf"\(at \d\d:\d\d:\d\d UTC\)$", out, re.M), out
    assert re.fullmatch(rf"FedSM peak RSS / bytes held, 3 clients: {NUMBER}x at most \(\S+; goal <= 1.3x\); sum of "
                        rf"the sites' peaks {NUMBER} GB \(goal <= 24 GB\)", last_line(out)), out
    check_fedsm_default_run(tmp_path / "fedsm_prostate" / "ws" / "fedsm_prostate", tmp_path / "data" / "prostate")


def check_fedsm_default_run(workspace: Path, data: Path) -> None:
    """The run above is the end-to-end test of the shipped FedSM job (VGG-11 selector, full-batch selector steps,
    the moment filters; 2 rounds, 64x64 slices): its models, the synced moments, and the test script's routing."""
    app_server = workspace / "server" / "simulate_job" / "app_server"
    names = ["global", "selector"] + [f"personal_{c}" for c in PROSTATE_CLIENTS]
    for kind in ("best", "last"):
        for name in names:
            assert (app_server / f"{kind}_{name}_model.pt").is_file(), f"{kind} {name}"
    assert json.loads((app_server / "site_labels.json").read_text()) == {c: i for i, c in enumerate(PROSTATE_CLIENTS)}
    state = torch.load(app_server / "server_state.pt", weights_only=True)
    selector = state["models"]["selector"]
    assert "classifier.0.weight" in selector and tuple(selector["classifier.0.weight"].shape) == (4096, 25088)
    moments = state["extra"]["selector_moments"]
    assert moments, "the moment filters are configured, so the server must hold averaged moments"
    trained = {k for k in selector if k.endswith(("weight", "bias"))}
    assert set(moments) == {f"{k}.{m}" for k in trained for m in ("exp_avg", "exp_avg_sq")}, "no 'step' travels"
    for client in PROSTATE_CLIENTS:
        log = (workspace / client / "log.txt").read_text()
        assert "loaded synced Adam moments for 22 selector parameters" in log, client  # round 1: round 0's average
        assert len(re.findall(r"selector epoch 1/1 \(one step\)", log)) == 2, client

    def test_only(threshold: str) -> str:
        done = subprocess.run([sys.executable, str(ROOT / "result_stat" / "prostate_2d_test_only.py"), "--models_dir",
                               str(app_server), "--data_root", str(data / "dataset_2D"), "--datalist",
                               str(data / "datalist_2D"), "--select_threshold", threshold],
                              cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        return done.stdout

    total = len(json.loads((data / "datalist_2D" / "client_All.json").read_text())["testing"])
    super_out = test_only("0.9")
    assert re.search(rf"^routing \(top selector probability > 0.9\): \d+ of {total} test slices to personalised "
                     r"models \(", super_out, re.M), super_out
    assert re.search(r"^pooled test Dice of the best super model \(threshold 0.9\) and global model, mean over "
                     rf"the {total} slices of client_All.json: global [0-9.]+, super [0-9.]+$", super_out, re.M)
    for client in PROSTATE_CLIENTS:
        assert re.search(rf"^{client}: global [0-9.]+, super [0-9.]+, selector_accuracy [0-9.]+ \(\d+ slices\)$",
                         super_out, re.M), super_out
    global_out = test_only("1")
    assert f"0 of {total} test slices to personalised models (global {total})" in global_out, global_out
    pooled = re.search(r"global ([0-9.]+), super ([0-9.]+)$", global_out, re.M)
    assert pooled[1] == pooled[2], "threshold 1: the super model is the global model"


def test_payload_benchmark_lists_every_method():
    out = run_command("bench_payload.py")
    rows = re.findall(rf"^(.+?)\s+(\w+)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})$", out, re.M)
    assert {row[1] for row in rows} >= {"fedavg_prostate", "fedsm_prostate", "harmofl_prostate", "prrfl_dermoscopy",
                                        "fedmas_isic2019", "fedavg_medmnist"}, out
    for row in rows:
        assert math.isclose(float(row[2]) + float(row[3]), float(row[4]), abs_tol=0.02), row
    assert last_line(out).startswith("largest traffic per client per round: FedSM"), out  # the VGG-11 selector


def test_ampnorm_benchmark_prints_the_speed_up():
    out = run_command("bench_ampnorm.py", "--n", 8, "--size", 32, "--repeats", 1)
    ratio = re.fullmatch(rf"ratio: ({NUMBER})x \(goal >= 10x\)", last_line(out))
    assert ratio and float(ratio[1]) > 0, out


def test_aggregation_benchmark_prints_each_share(tmp_path):
    """With the small selector (the VGG-11 default runs end to end in the memory benchmark's test)."""
    out = run_command("bench_aggregation.py", "--repeats", 1, "--work", tmp_path,
                      "--fedsm_train", json.dumps({"selector_network": SMALL_SELECTOR}))
    for method in ("SoftPull", "PFA", "MAS"):
        assert re.search(rf"^{method}\b.*?({NUMBER}) ?%", out, re.M), (method, out)
    assert re.search(rf"{NUMBER} ?%", last_line(out)), out


def test_local_epoch_benchmark_prints_each_case_and_the_goals(tmp_path):
    out = run_command("bench_local_epoch.py", "--sizes", "dermoscopy:32", "prostate:64", "--images", 16,
                      "--repeats", 1, "--threads", 1, "--work", tmp_path)
    assert re.search(rf"^torch threads 1; float32 matmul {NUMBER} GFLOP/s$", out, re.M), out
    for case, size in (("dermoscopy client\\w", 32), ("prostate client_I2CVB", 64)):
        row = (rf"^{case}\s+{size}\s+16\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}%\s+{NUMBER}x\s+{NUMBER}"
               rf"\s+{NUMBER}%$")
        assert re.search(row, out, re.M), (case, out)
        assert re.search(rf"^  {case} {size} px: model loop reaches {NUMBER} % of the matmul rate$", out, re.M), out
    assert re.fullmatch(rf"worst data pipeline share {NUMBER} % \(goal <= 15 %\), worst epoch / model-only "
                        rf"{NUMBER}x \(goal <= 1.3x\)", last_line(out)), out

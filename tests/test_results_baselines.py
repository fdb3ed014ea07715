"""Local-only and centralised baselines (benchmarks/baselines.py) and the results table writer
(benchmarks/results_table.py), on tiny tensors."""

import csv

import pytest
import torch
from baselines import Recipe, SiteData, centralised, local_only, run_baselines, train_selected
from results_table import main as results_table_main
from results_table import markdown_table, mean_std, plot_curves, report, summarise, write_results
from torch.utils.data import Dataset


class Tensors(Dataset):
    """``n`` 1x4x4 images whose label is a fixed function of the image (a learnable target)."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 1, 4, 4, generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": 2.0 * self.images[i]}


def negative_mse(model, loader, device):
    with torch.no_grad():
        errors = [torch.mean((model(b["image"]) - b["label"]) ** 2).item() for b in loader]
    return -sum(errors) / len(errors)


def recipe(epochs=3, metric=negative_mse):
    return Recipe(build_model=lambda: torch.nn.Conv2d(1, 1, 1), loss_fn=torch.nn.MSELoss(),
                  make_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.5), metric=metric,
                  epochs=epochs, batch_size=4, seed=0)


SITES = {name: SiteData(Tensors(8, i), Tensors(4, 10 + i), Tensors(4, 20 + i)) for i, name in enumerate(("a", "b"))}


def test_local_only_trains_one_model_per_site_and_learns():
    result = local_only(SITES, recipe(epochs=4))
    assert set(result.test) == {"a", "b"} and len(result.curve) == 4
    assert result.curve[-1] > result.curve[0], "training must reduce the validation error"


def test_centralised_pools_the_training_data_and_tests_per_site():
    seen = []

    class CountingLoss(torch.nn.MSELoss):
        def forward(self, prediction, target):
            seen.append(len(prediction))
            return super().forward(prediction, target)

    r = recipe(epochs=1)
    r.loss_fn = CountingLoss()
    result = centralised(SITES, r)
    assert sum(seen) == 16, "one epoch must see every site's training images"
    assert set(result.test) == {"a", "b"} and len(result.curve) == 1


def test_the_best_validation_epoch_is_kept():
    scores, states = iter([0.1, 0.9, 0.3]), []

    def scripted(model, loader, device):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    model, curve = train_selected(recipe(epochs=3, metric=scripted), SITES["a"].training, {"a": SITES["a"].validation})
    assert curve == [0.1, 0.9, 0.3]
    assert all(torch.equal(model.state_dict()[k], states[1][k]) for k in states[1])


def test_same_seed_same_curve_with_monai_augmentation():
    """The baselines seed the MONAI random transforms of the training data, as the clients do."""
    from monai.transforms import RandGaussianNoised

    class Augmented(Tensors):
        transform = RandGaussianNoised(keys="image", prob=1.0, std=0.5)

        def __getitem__(self, i):
            return self.transform(super().__getitem__(i))

    training = torch.utils.data.ConcatDataset([Augmented(8, 0), Augmented(8, 1)])
    curves = [centralised({"a": SiteData(training, Tensors(4, 9), Tensors(4, 10))}, recipe(epochs=2)).curve
              for _ in range(2)]
    assert curves[0] == curves[1]


def test_run_baselines_adds_both_rows_and_the_first_seeds_curves():
    scores, curves = {"FedAvg": [{"a": 0.5, "b": 0.5}]}, {}
    run_baselines(SITES, recipe(epochs=2), scores, curves, keep_curves=True)
    run_baselines(SITES, recipe(epochs=2), scores, curves, keep_curves=False)
    assert set(scores) == {"FedAvg", "local only", "centralised"}
    assert all(len(scores[m]) == 2 and set(scores[m][0]) == {"a", "b"} for m in ("local only", "centralised"))
    assert set(curves) == {"local only", "centralised"} and curves["centralised"][0] == [1, 2]


def test_run_baselines_tests_the_selected_models_on_the_recipes_other_metrics_too():
    def zero(model, loader, device):
        return 0.0

    r = recipe(epochs=1)
    r.test_metrics = {"zero": zero}
    scores, more, curves = {}, {"zero": {"FedAvg": [{"a": 1.0, "b": 1.0}]}}, {}
    run_baselines(SITES, r, scores, curves, keep_curves=False, more_scores=more)
    assert set(more["zero"]) == {"FedAvg", "local only", "centralised"}
    assert more["zero"]["local only"] == more["zero"]["centralised"] == [{"a": 0.0, "b": 0.0}]
    assert all(value < 0 for run in scores.values() for value in run[0].values())  # the recipe's metric


def test_a_zero_budget_is_refused():
    with pytest.raises(ValueError, match="at least one epoch"):
        train_selected(recipe(epochs=0), SITES["a"].training, {"a": SITES["a"].validation})


SCORES = {"FedAvg": [{"s1": 0.5, "s2": 0.7}, {"s1": 0.7, "s2": 0.9}], "local": [{"s1": 0.2, "s2": 0.4}]}


def test_summary_mean_and_sample_std_over_seeds():
    assert mean_std([1.0]) == (1.0, 0.0)
    sites, table = summarise(SCORES)
    assert sites == ["s1", "s2"]
    mean, std, seeds = table["FedAvg"]["mean"]
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.1414, abs=1e-4) and seeds == 2
    assert table["local"]["mean"] == (pytest.approx(0.3), 0.0, 1)


def test_markdown_and_csv(tmp_path):
    text = markdown_table(SCORES, digits=2)
    assert text.splitlines()[0] == "| method | s1 | s2 | mean |"
    assert "| FedAvg | 0.60 ± 0.14 | 0.80 ± 0.14 | 0.70 ± 0.14 |" in text
    assert "| local | 0.20 | 0.40 | 0.30 |" in text
    markdown, table_csv = write_results(SCORES, tmp_path, "demo", caption="Demo federation")
    assert markdown.read_text().startswith("Demo federation\n\n| method |")
    rows = list(csv.DictReader(table_csv.open()))
    assert len(rows) == 6 and rows[2] == {"method": "FedAvg", "site": "mean", "mean": "0.700000",
                                          "std": "0.141421", "seeds": "2"}


def test_report_writes_one_table_per_metric(tmp_path, capsys):
    other = {"FedAvg": [{"s1": 0.1, "s2": 0.3}], "local": [{"s1": 0.0, "s2": 0.2}]}
    means = report(SCORES, {"FedAvg": ([1], [0.5])}, {"job": [3.0]}, tmp_path, "demo", "Demo F1", "F1",
                   more={"accuracy": ("Demo accuracy", other)})
    assert means == {"FedAvg": pytest.approx(0.7), "local": pytest.approx(0.3)}  # the first metric's
    assert (tmp_path / "demo_results.md").read_text().startswith("Demo F1\n\n")
    accuracy = (tmp_path / "demo_accuracy_results.md").read_text()
    assert accuracy.startswith("Demo accuracy\n\n") and "| local | 0.0000 | 0.2000 | 0.1000 |" in accuracy
    assert (tmp_path / "demo_accuracy_results.csv").is_file()
    out = capsys.readouterr().out
    assert out.index("Demo F1") < out.index("Demo accuracy") and "simulator wall time: job 3 s" in out


def test_runs_over_different_sites_are_an_error():
    with pytest.raises(ValueError, match="local: sites"):
        summarise({"FedAvg": [{"s1": 0.5}], "local": [{"s2": 0.5}]})


def single_seed_tables(tmp_path, runs):
    """One single-seed results CSV per run of ``{method: {site: score}}``, as a comparison writes them."""
    return [write_results({m: [scores] for m, scores in run.items()}, tmp_path / f"seed{i}", "demo")[1]
            for i, run in enumerate(runs)]


def test_combine_merges_single_seed_tables_into_the_multi_seed_table(tmp_path, capsys):
    runs = [{"FedAvg": {"s1": 0.5, "s2": 0.7}, "local": {"s1": 0.2, "s2": 0.4}},
            {"FedAvg": {"s1": 0.7, "s2": 0.9}, "local": {"s1": 0.25, "s2": 0.35}}]
    markdown, table_csv = results_table_main(["combine", "--name", "both", "--output", str(tmp_path / "out"),
                                              "--caption", "Two seeds", *map(str, single_seed_tables(tmp_path, runs))])
    expected = {"FedAvg": [runs[0]["FedAvg"], runs[1]["FedAvg"]], "local": [runs[0]["local"], runs[1]["local"]]}
    assert markdown.read_text() == "Two seeds\n\n" + markdown_table(expected)
    assert "| FedAvg | 0.6000 ± 0.1414 | 0.8000 ± 0.1414 | 0.7000 ± 0.1414 |" in markdown.read_text()
    reference = write_results(expected, tmp_path / "reference", "both", "Two seeds")[1]
    assert table_csv.read_text() == reference.read_text()
    assert "written: " in capsys.readouterr().out


def test_combine_refuses_multi_seed_tables_and_other_sites_naming_the_file(tmp_path, capsys):
    good, other_sites = single_seed_tables(tmp_path, [{"FedAvg": {"s1": 0.5, "s2": 0.7}},
                                                      {"FedAvg": {"s1": 0.5, "s3": 0.7}}])
    multi = write_results(SCORES, tmp_path / "multi", "three")[1]
    out = ["combine", "--name", "x", "--output", str(tmp_path / "out")]
    for bad, message in ((multi, f"{multi}: FedAvg is a mean over 2 seeds"),
                         (other_sites, f"{other_sites}: FedAvg has the sites ['s1', 's3'], {good} has ['s1', 's2']")):
        with pytest.raises(SystemExit) as exit_info:
            results_table_main([*out, str(good), str(bad)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_curves_png(tmp_path):
    path = plot_curves({"FedAvg": ([1, 2], [0.1, 0.2]), "local": ([1, 2], [0.2, 0.1])}, tmp_path / "c.png", "Dice")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_round_start_times_from_a_server_log(tmp_path):
    from simrun import round_start_times

    log = tmp_path / "server" / "log.txt"
    log.parent.mkdir()
    log.write_text("2026-11-25 13:00:00,000 - X - INFO - [wf=fedavg] - round 1/3 started\n"
                   "2026-11-25 13:00:01,000 - X - INFO - other line\n"
                   "2026-11-25 13:00:02,500 - X - INFO - [wf=fedavg] - round 2/3 started\n"
                   "2026-11-25 13:00:04,000 - X - INFO - [wf=fedavg] - round 3/3 started\n")
    assert round_start_times(tmp_path) == pytest.approx([0.0, 2.5, 4.0])


def test_offline_fedavg_round_sends_the_unet_and_aggregates():
    from offline import offline_round, payload_bytes

    from medfl.common.params import unbundle

    offline = offline_round("fedavg_prostate")
    unet = offline.controller.models["global"]
    assert payload_bytes(offline.controller.payload_for(offline.clients[0])) == sum(v.nbytes for v in unet.values())
    offline.controller.aggregate(offline.results)  # equal sample counts: the plain mean of the updates
    key = next(k for k, v in unet.items() if v.dtype.kind == "f")
    updates = [unbundle(r.params)["global"][key] for r in offline.results.values()]
    assert offline.controller.models["global"][key] == pytest.approx(sum(updates) / len(updates), abs=1e-5)


def test_overhead_splits_each_round_into_parts_from_the_server_and_client_logs(tmp_path):
    from bench_overhead import PARTS, round_parts

    def line(second: float, text: str) -> str:
        return f"2026-11-25 13:00:{int(second):02d},{round(second % 1 * 1000):03d} - X - INFO - {text}\n"

    server, client = [], []
    for k in range(4):  # rounds start every 10 s
        t = 10.0 * k
        server.append(line(t, f"[wf=fedavg] - round {k + 1}/4 started"))
        client.append(line(t + 0.5, "[identity=c] - got task assignment: name=train, id=x"))
        client.append(line(t + 2.5, f"[task_name=train, task_id=x] - round {k} global epoch 1/2: loss 0.9"))
        client.append(line(t + 4.0, f"[task_name=train, task_id=x] - round {k} global epoch 2/2: loss 0.8"))
        client.append(line(t + 4.5, "[task_name=train, task_id=x] - finished processing task"))
        server.append(line(t + 4.75, "[peer=c] - got result from client c for task: name=train, id=x"))
        server.append(line(t + 5.0, f"[wf=fedavg] - round {k + 1}/4 finished with 1 clients"))
    client.append(line(39.5, "[identity=c] - got task assignment: name=validate, id=y"))
    for site, lines in (("server", server), ("c", client)):
        (tmp_path / site).mkdir()
        (tmp_path / site / "log.txt").write_text("".join(lines))
    parts = round_parts(tmp_path, "c", rounds=4)
    assert list(parts) == [name for name, _, _ in PARTS]
    assert parts == pytest.approx({"task to client": 0.5, "local work": 3.5, "client after training": 0.5,
                                   "result to server": 0.25, "server after result": 0.25, "until next round": 5.0})

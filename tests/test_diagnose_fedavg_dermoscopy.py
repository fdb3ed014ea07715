"""``benchmarks/diagnose_fedavg_dermoscopy.py`` on two HAM10000-mini clients for two rounds with a tiny VGG: every
diagnostic is there for every client, and the clients receive in round 1 exactly the aggregate of round 0 (the
diagnosis scores the model the server sends)."""

from __future__ import annotations

import json

import compare_dermoscopy
import diagnose_fedavg_dermoscopy
import pytest

pytestmark = pytest.mark.bench  # make test-bench

CLIENTS = ["clientA", "clientB"]
TRAIN = {"image_size": 32, "local_epochs": 1,
         "network": {"name": "medfl.federations.dermoscopy.networks:vgg16_slim",
                     "args": {"blocks": [[4], [4], [4], [4], [4]], "hidden_features": 4}}}
VARIANTS = ("local", "avg eval", "avg BN re-est", "avg train-mode", "ensemble")


def test_diagnosis_reports_every_variant_and_scores_the_sent_aggregate(tmp_path, capsys, shared_data):
    data = compare_dermoscopy.demo_dermoscopy(tmp_path / "data", TRAIN["image_size"], shared_data)
    output = tmp_path / "diagnosis.json"
    report = diagnose_fedavg_dermoscopy.main(
        ["--data", str(data), "--clients", *CLIENTS, "--rounds", "2", "--centralised-epochs", "1", "--seed", "3",
         "--train", json.dumps(TRAIN), "--output", str(output)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    first, second = report["fedavg"]
    for record in (first, second):
        assert record["weights"] == [1.0, 1.0]  # the job's equal weights
        assert set(record["updates"]["cosines"]) == {"AB"} and record["largest_change"] > 0
        for site in CLIENTS:
            assert record["schedule"][site]["lr"] == 0.01 and record["schedule"][site]["momentum"] == 0.0
            for variant in VARIANTS:
                assert 0 <= record[variant][site]["macro_f1"] <= 1
                assert len(record[variant][site]["histogram"]) == 3
    for site in CLIENTS:  # what round 1 received is what round 0 aggregated
        assert second["received"][site]["macro_f1"] == pytest.approx(first["avg eval"][site]["macro_f1"], abs=1e-4)
    (epoch,) = report["centralised"]
    assert set(epoch) == set(CLIENTS)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("FedAvg aggregate mean validation macro-F1 per round [") and "centralised per epoch [" in last

"""``benchmarks/bench_fedmas_prior.py`` on the HAM10000-mini dermoscopy federation at a tiny budget (``bench``)."""

import re

import pytest
from test_benchmarks import NUMBER, last_line, run_command

pytestmark = pytest.mark.bench


def test_prior_benchmark_prints_knn_accuracies_and_mas_weights(tmp_path, shared_data):
    from compare_dermoscopy import demo_dermoscopy

    data = demo_dermoscopy(tmp_path / "data", shared_data=shared_data)
    out = run_command("bench_fedmas_prior.py", "--data", data, "--train-minutes", 0.2, "--work", tmp_path / "prior",
                      "--network-args", '{"blocks": [[8], [16], [16], [32], [32]], "hidden_features": 32}',
                      "--pretrain", "--epochs", 2, "--batch-size", 32, "--queue-size", 256, "--in-memory")
    for encoder in ("prior", "random"):
        for k in ("k1", "k20"):
            assert re.search(rf"^  {encoder}\s+{k}: accuracy {NUMBER}, balanced accuracy {NUMBER}", out, re.M), out
    assert len(re.findall(r"^  client[A-D]: D_pre .* MAS weight " + NUMBER, out, re.M)) == 8, out
    figures = dict(re.findall(rf"(\w+)=({NUMBER})", last_line(out)))
    for name in ("prior_k20_balanced_accuracy", "random_k20_balanced_accuracy", "prior_k1_balanced_accuracy"):
        assert 0 <= float(figures[name]) <= 1, figures
    for name in ("prior", "random"):
        assert 0 < float(figures[f"{name}_mas_weight_min"]) <= 0.25 <= float(figures[f"{name}_mas_weight_max"]) < 1
    assert float(figures["final_moco_loss"]) > 0 and float(figures["uniform_weight"]) == 0.25

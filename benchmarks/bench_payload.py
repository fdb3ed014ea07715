"""Bytes sent per client per round, both ways, for every method, at the jobs' real network sizes.

    python benchmarks/bench_payload.py

Server to client: the controller's ``payload_for(client)`` in a round after the first (FedSM then also sends
the averaged selector Adam moments). Client to server: an update with the keys and shapes the method's
clients export (:mod:`offline`). Sizes are the arrays' bytes (float32), without NVFlare's framing; HarmoFL
also sends one amplitude spectrum per client once, before round 0, not counted here. The last line is the
largest per-round total.
"""

from __future__ import annotations

import argparse
from typing import Dict, Tuple

from offline import offline_round, payload_bytes

METHODS = {
    "FedAvg (prostate UNet)": "fedavg_prostate",
    "FedSM": "fedsm_prostate",
    "HarmoFL (prostate)": "harmofl_prostate",
    "PRR-FL (deputy, no BN)": "prrfl_dermoscopy",
    "FedAvg (dermoscopy VGG)": "fedavg_dermoscopy",
    "FedMAS": "fedmas_isic2019",
    "FedAvg (ISIC2019 ResNet18)": "fedavg_isic2019",
    "FedAvg (MedMNIST CNN)": "fedavg_medmnist",
    "FedAvg (MedMNIST LeNet)": "fedavg_medmnist_scaleout",
}
MIB = 2 ** 20


def main(argv=None) -> Dict[str, Tuple[int, int]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    sizes = {}
    print(f"{'method':28s} {'job':24s} {'down MiB':>9s} {'up MiB':>8s} {'total MiB':>10s}")
    for method, job in METHODS.items():
        offline = offline_round(job)
        client = offline.clients[0]
        down = payload_bytes(offline.controller.payload_for(client))
        up = payload_bytes(offline.results[client].params)
        sizes[method] = (down, up)
        print(f"{method:28s} {job:24s} {down / MIB:9.2f} {up / MIB:8.2f} {(down + up) / MIB:10.2f}")
    largest = max(sizes, key=lambda m: sum(sizes[m]))
    print(f"largest traffic per client per round: {largest} {sum(sizes[largest]) / MIB:.2f} MiB")
    return sizes


if __name__ == "__main__":
    main()

"""Is FedMAS's prior informative? k-NN accuracy of its frozen features, and the MAS weights it leads to.

    python benchmarks/bench_fedmas_prior.py --data DATASET_ROOT --prior PRIOR.pth.tar [--image-size 32]
    python benchmarks/bench_fedmas_prior.py --data DATASET_ROOT --train-minutes 5 --work /tmp/prior   # train one

``DATASET_ROOT`` holds ``prrfl_ham10000/`` (``data_preparation/prepare_ham10000_prrfl.py``). Without ``--prior``,
the prior is pre-trained first by ``medfl.fedmas.pretrain --preset small_images`` on the clients' pooled training
images for ``--train-minutes`` (the comparison's recipe; ``--pretrain`` adds options).

1. k-NN (Wu et al. 2018; ``medfl.fedmas.probe``): the clients' pooled **training** splits are the memory bank, their
   pooled **validation** splits the queries; k = 1 and k = 20 (cosine similarity, votes weighted
   exp(sim / 0.07)). Accuracy, balanced accuracy and per-class recall, for the prior and for a randomly initialised
   ResNet of the same depth (the same images, ImageNet-normalised as the FedMAS dermoscopy client gives them).
2. The MoCo loss per epoch, from the checkpoint's ``history`` (chance level log(1 + queue)).
3. MAS in round 0, for the prior and for the random ResNet: from one randomly initialised ``free_head_vgg16_slim``
   global model, each client measures D_pre on its training split (§3.5 (a)), trains ``--local-epochs`` with the
   FedMAS objective (BSM(z1) + BSM(z2) + 3 mean d, SGD 1e-2, weight decay 1e-6, batch 16, gradient norm clipped at
   5: the ``fedmas_dermoscopy`` job's settings, without its augmentation) accumulating D_tr (§3.5 (b)), and gives
   its robust factor r_k; the MAS weights follow (§3.5 (d)). r_k = 1/|C_k| when the classes diverge alike, and then
   the weights are uniform.

The last line holds the figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from medfl.common.metrics import accuracy, balanced_accuracy
from medfl.common.resnet import resnet_trunk, trunk_features
from medfl.common.train import train_epoch
from medfl.federations.dermoscopy.data import SkinLesionDataset, split_csv_path
from medfl.fedmas import pretrain
from medfl.fedmas.aggregation import mas_weights, robust_factor
from medfl.fedmas.dermoscopy import FreeHeadVGG16Slim, unit_range_to_imagenet
from medfl.fedmas.losses import DEFAULT_FREE_U, ClassDivergence, FedMASLoss, prior_divergence
from medfl.fedmas.prior import FrozenPrior, load_moco_prior
from medfl.fedmas.probe import class_recalls, encode, knn_predict

CLIENTS = ["clientA", "clientB", "clientC", "clientD"]
CLASSES = ("nv", "bkl", "mel")  # prepare_ham10000_prrfl.py's label order
KS = (1, 20)
DEPTH = 18
IMAGE_SIZE = 32
SEED = 0
THREADS = 2
DIVERGENCE_BATCH = 64
# the fedmas_dermoscopy job's local training (config_train.json)
LOCAL_LR = 0.01
LOCAL_WEIGHT_DECAY = 1e-6
LOCAL_BATCH = 16
GRAD_CLIP_NORM = 5.0


def load_split(data_root: Path, client: str, split: str, image_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A client's split as images (N, 3, S, S) in [-1, 1] (the dermoscopy client's evaluation transform), labels."""
    dataset = SkinLesionDataset(data_root, client, split, num_classes=len(CLASSES), image_size=image_size)
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([item["image"] for item in items]), torch.tensor([item["label"] for item in items])


def knn_report(encoder: torch.nn.Module, bank: Tuple[torch.Tensor, torch.Tensor],
               queries: Tuple[torch.Tensor, torch.Tensor]) -> Dict[str, Dict[str, object]]:
    """k-NN figures of ``encoder`` for every k of ``KS``: accuracy, balanced accuracy, per-class recall."""
    bank_features = encode(encoder, unit_range_to_imagenet(bank[0]))
    query_features = encode(encoder, unit_range_to_imagenet(queries[0]))
    labels = queries[1].numpy()
    report = {}
    for k in KS:
        predicted = knn_predict(bank_features, bank[1], query_features, k, len(CLASSES)).numpy()
        report[f"k{k}"] = {"accuracy": accuracy(labels, predicted),
                           "balanced_accuracy": balanced_accuracy(labels, predicted),
                           "recall": dict(zip(CLASSES, class_recalls(labels, predicted, len(CLASSES))))}
    return report


@torch.no_grad()
def divergence_before_training(model: FreeHeadVGG16Slim, prior: FrozenPrior, images: torch.Tensor,
                               labels: torch.Tensor) -> torch.Tensor:
    """D_pre (§3.5 (a)) of ``model`` in eval mode on a client's training split: per class (C,)."""
    model.eval()
    d_pre = ClassDivergence(torch.bincount(labels, minlength=len(CLASSES)))
    for part, target in zip(images.split(DIVERGENCE_BATCH), labels.split(DIVERGENCE_BATCH)):
        _, _, p, _ = model.heads(part)
        d_pre.update(prior_divergence(p, prior(unit_range_to_imagenet(part))), target)
    return d_pre.compute()


def shuffled_batches(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> List[Dict]:
    """One epoch of ``{"image", "label"}`` batches of ``LOCAL_BATCH`` in random order, the last partial one dropped
    (the client's ``drop_last``)."""
    order = torch.randperm(len(labels), generator=generator)
    return [{"image": images[i], "label": labels[i]} for i in order.split(LOCAL_BATCH) if len(i) == LOCAL_BATCH]


def local_round(global_model: FreeHeadVGG16Slim, prior: FrozenPrior, images: torch.Tensor, labels: torch.Tensor,
                epochs: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A FedMAS client's round 0 from ``global_model``: D_pre, then ``epochs`` of local training that accumulate D_tr
    (the step of ``FedMASExecutor.train_step`` with the job's gradient clipping, outside NVFlare)."""
    model = copy.deepcopy(global_model)
    counts = torch.bincount(labels, minlength=len(CLASSES))
    d_pre = divergence_before_training(model, prior, images, labels)
    d_tr = ClassDivergence(counts)
    optimizer = torch.optim.SGD(model.parameters(), lr=LOCAL_LR, weight_decay=LOCAL_WEIGHT_DECAY)

    def step(model, batch, loss_fn, optimizer) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        _, z1, p, z2 = model.heads(batch["image"])
        loss, d = loss_fn(z1, p, z2, prior(unit_range_to_imagenet(batch["image"])), batch["label"])
        d_tr.update(d, batch["label"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
        optimizer.step()
        return loss.detach()

    generator = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        train_epoch(model, shuffled_batches(images, labels, generator), FedMASLoss(counts, DEFAULT_FREE_U),
                    optimizer, torch.device("cpu"), step=step)
    return d_pre, d_tr.compute()


def mas_report(prior: FrozenPrior, train: Dict[str, Tuple[torch.Tensor, torch.Tensor]], network_args: Dict,
               epochs: int) -> Dict[str, object]:
    """Round 0 of FedMAS from one random global model: per client D_pre, D_tr, r_k; the MAS weights."""
    torch.manual_seed(SEED)
    model = FreeHeadVGG16Slim(num_classes=len(CLASSES), prior_dim=prior.out_features, **network_args)
    divergences = {client: local_round(model, prior, *split, epochs) for client, split in train.items()}
    factors = {client: robust_factor(d_pre, d_tr) for client, (d_pre, d_tr) in divergences.items()}
    weights = dict(zip(factors, mas_weights(list(factors.values()))))
    return {"d_pre": {c: d[0].tolist() for c, d in divergences.items()},
            "d_tr": {c: d[1].tolist() for c, d in divergences.items()},
            "robust_factor": factors, "mas_weight": weights,
            "inverse_classes": {c: 1 / int((d[0] > 0).sum()) for c, d in divergences.items()}}


def train_prior(work: Path, data_root: Path, clients: Sequence[str], image_size: int, minutes: float,
                extra: Sequence[str]) -> Path:
    output = work / f"moco_r{DEPTH}_{image_size}px_small_images_{minutes:g}min.pth.tar"
    datalists = [str(split_csv_path(data_root, client, "train")) for client in clients]
    pretrain.main(["--images", str(data_root), "--datalists", *datalists, "--output", str(output),
                   "--depth", str(DEPTH), "--image-size", str(image_size), "--preset", "small_images",
                   "--time-budget", str(minutes), "--threads", str(THREADS), "--seed", str(SEED), *extra])
    return output


def print_knn(name: str, report: Dict[str, Dict[str, object]]) -> None:
    for k, figures in report.items():
        recall = ", ".join(f"{c} {r:.3f}" for c, r in figures["recall"].items())
        print(f"  {name:<6} {k:>3}: accuracy {figures['accuracy']:.3f}, balanced accuracy "
              f"{figures['balanced_accuracy']:.3f} (recall {recall})")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="DATASET_ROOT holding prrfl_ham10000/")
    parser.add_argument("--prior", type=Path, help="MoCo-v2 checkpoint to measure (default: train one)")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="side of the prepared images")
    parser.add_argument("--clients", nargs="+", default=CLIENTS)
    parser.add_argument("--train-minutes", type=float, default=5.0, help="pre-training budget without --prior")
    parser.add_argument("--pretrain", nargs=argparse.REMAINDER, default=[],
                        help="more options for medfl.fedmas.pretrain (after the others)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_fedmas_prior"), help="where a prior is trained")
    parser.add_argument("--local-epochs", type=int, default=1,
                        help="local epochs of the FedMAS round 0 (0: skip the MAS part)")
    parser.add_argument("--network-args", type=json.loads, default={},
                        help="free_head_vgg16_slim arguments besides num_classes and prior_dim (JSON)")
    return parser.parse_args(argv)


def main(argv=None) -> Dict[str, object]:
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    data_root = args.data / "prrfl_ham10000"
    start = time.time()
    prior_path = args.prior or train_prior(args.work, data_root, args.clients, args.image_size, args.train_minutes,
                                           args.pretrain)
    trained_s = time.time() - start
    train = {c: load_split(data_root, c, "train", args.image_size) for c in args.clients}
    valid = {c: load_split(data_root, c, "valid", args.image_size) for c in args.clients}
    pooled = {name: (torch.cat([x for x, _ in split.values()]), torch.cat([y for _, y in split.values()]))
              for name, split in (("train", train), ("valid", valid))}
    print(f"{len(pooled['train'][1])} training images (memory bank), {len(pooled['valid'][1])} validation images "
          f"(queries), {args.image_size} px; classes {dict(zip(CLASSES, torch.bincount(pooled['valid'][1]).tolist()))}"
          f" in validation")

    prior = load_moco_prior(prior_path, depth=DEPTH)
    torch.manual_seed(SEED)
    random_prior = FrozenPrior(resnet_trunk(DEPTH), trunk_features(DEPTH))
    knn = {"prior": knn_report(prior, pooled["train"], pooled["valid"]),
           "random": knn_report(random_prior, pooled["train"], pooled["valid"])}
    print(f"k-NN on frozen features ({prior_path}):")
    for name, report in knn.items():
        print_knn(name, report)

    checkpoint = torch.load(prior_path, map_location="cpu", weights_only=True)
    history = checkpoint.get("history", [])
    queue = checkpoint["state_dict"]["module.queue"].shape[1]
    print(f"MoCo loss per epoch (chance log(1 + {queue}) = {math.log(1 + queue):.3f}): "
          + " ".join(f"{h['loss']:.2f}" for h in history))

    figures = {
        "prior_k20_balanced_accuracy": knn["prior"]["k20"]["balanced_accuracy"],
        "random_k20_balanced_accuracy": knn["random"]["k20"]["balanced_accuracy"],
        "prior_k1_balanced_accuracy": knn["prior"]["k1"]["balanced_accuracy"],
        "random_k1_balanced_accuracy": knn["random"]["k1"]["balanced_accuracy"],
        "prior_k20_accuracy": knn["prior"]["k20"]["accuracy"],
        "random_k20_accuracy": knn["random"]["k20"]["accuracy"],
        "final_moco_loss": history[-1]["loss"] if history else float("nan"),
        "pretrain_s": trained_s,
    }
    mas = {}
    if args.local_epochs > 0:
        mas = {"prior": mas_report(prior, train, args.network_args, args.local_epochs),
               "random": mas_report(random_prior, train, args.network_args, args.local_epochs)}
    for name, report in mas.items():
        print(f"FedMAS round 0 with the {name} ResNet as prior ({args.local_epochs} local epoch(s)):")
        for client in args.clients:
            d_pre = " ".join(f"{v:.4f}" for v in report["d_pre"][client])
            d_tr = " ".join(f"{v:.4f}" for v in report["d_tr"][client])
            print(f"  {client}: D_pre ({'/'.join(CLASSES)}) {d_pre}; D_tr {d_tr}; r_k "
                  f"{report['robust_factor'][client]:.4f} (1/|C_k| {report['inverse_classes'][client]:.4f}); "
                  f"MAS weight {report['mas_weight'][client]:.4f}")
        weights = list(report["mas_weight"].values())
        figures[f"{name}_mas_weight_min"], figures[f"{name}_mas_weight_max"] = min(weights), max(weights)
    if mas:
        figures["uniform_weight"] = 1 / len(args.clients)
    print(" ".join(f"{k}={v:.4f}" for k, v in figures.items()))
    return {"knn": knn, "mas": mas, "history": history, "figures": figures}


if __name__ == "__main__":
    main(sys.argv[1:])

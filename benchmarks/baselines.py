"""The two non-federated baselines of every comparison: local-only training per site and centralised training on
the pooled data, both with the project's common training loop (:func:`medfl.common.train.train_epoch`).

The budget is the federated run's: ``epochs = num_rounds * local_epochs`` passes over the training data, the
same network, optimizer, loss, batch size and seed. As the federated jobs keep the best model by validation,
each baseline keeps the epoch whose validation metric is best and reports that model's test metric:

* local-only: site k trains its own model on its own data and selects it on its own validation split;
* centralised: one model trains on the union of the sites' training splits and is selected on the
  validation-size weighted mean over the sites' validation splits (the server's ``val_mean``).

No NVFlare is needed; datasets yield ``{"image", "label"}`` dicts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from medfl.common.random_state import seed_random_transforms
from medfl.common.runtime import seed_everything
from medfl.common.train import train_epoch

MetricFn = Callable[[torch.nn.Module, DataLoader, torch.device], float]


@dataclass
class SiteData:
    """One site's splits."""

    training: Dataset
    validation: Dataset
    testing: Dataset


@dataclass
class Recipe:
    """What a baseline shares with the federated run: model, loss, optimizer, metric and budget."""

    build_model: Callable[[], torch.nn.Module]
    loss_fn: Callable
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]
    metric: MetricFn  # higher is better
    epochs: int
    batch_size: int
    seed: int = 0
    eval_batch_size: int = 16
    drop_last: bool = False  # drop a last short training batch (as the classification clients, for BatchNorm)
    # per-epoch learning-rate schedule (e.g. PRR-FL's decay every few rounds); None: constant
    make_scheduler: Optional[Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # other test metrics of the selected models, by name (e.g. balanced accuracy beside macro-F1); never selects
    test_metrics: Mapping[str, MetricFn] = field(default_factory=dict)


@dataclass
class BaselineResult:
    """Test metric per site of the selected model(s), the validation curve (one value per epoch) and
    ``{name: {site: value}}`` of the recipe's ``test_metrics``."""

    test: Dict[str, float]
    curve: List[float]
    more: Dict[str, Dict[str, float]] = field(default_factory=dict)


def _loader(dataset: Dataset, recipe: Recipe) -> DataLoader:
    return DataLoader(dataset, batch_size=recipe.eval_batch_size)


def record_test(result: BaselineResult, site: str, model: torch.nn.Module, testing: Dataset, recipe: Recipe) -> None:
    """Put ``model``'s test ``metric`` and ``test_metrics`` on ``site``'s ``testing`` split into ``result``."""
    loader = _loader(testing, recipe)
    result.test[site] = recipe.metric(model, loader, recipe.device)
    for name, metric in recipe.test_metrics.items():
        result.more.setdefault(name, {})[site] = metric(model, loader, recipe.device)


def _weighted_mean(values: Mapping[str, float], sizes: Mapping[str, int]) -> float:
    return sum(values[s] * sizes[s] for s in values) / sum(sizes[s] for s in values)


def train_selected(recipe: Recipe, training: Dataset, validation: Mapping[str, Dataset]) -> tuple:
    """Train one model for ``recipe.epochs`` epochs; after each, score it on every validation set.

    Returns ``(model with the best epoch's weights, curve)``, the curve being the size-weighted mean validation
    metric per epoch.
    """
    if recipe.epochs < 1:
        raise ValueError(f"the budget must be at least one epoch, got {recipe.epochs}")
    seed_everything(recipe.seed)
    seed_random_transforms({"training": training}, recipe.seed)  # as the clients do
    model = recipe.build_model().to(recipe.device)
    optimizer = recipe.make_optimizer(model)
    scheduler = recipe.make_scheduler(optimizer) if recipe.make_scheduler else None
    train_loader = DataLoader(training, batch_size=recipe.batch_size, shuffle=True,
                              drop_last=recipe.drop_last and len(training) > recipe.batch_size)
    sizes = {site: len(data) for site, data in validation.items()}
    best_score, best_state, curve = -float("inf"), None, []
    for _ in range(recipe.epochs):
        train_epoch(model, train_loader, recipe.loss_fn, optimizer, recipe.device)
        if scheduler is not None:
            scheduler.step()
        scores = {site: recipe.metric(model, _loader(data, recipe), recipe.device) for site, data in validation.items()}
        curve.append(_weighted_mean(scores, sizes))
        if curve[-1] > best_score:
            best_score, best_state = curve[-1], copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model, curve


def local_only(sites: Mapping[str, SiteData], recipe: Recipe) -> BaselineResult:
    """Every site trains alone; its test metric is its own selected model's on its own test split.

    The curve is the size-weighted mean over sites of each site's own validation metric per epoch.
    """
    result, curves = BaselineResult({}, []), {}
    for site, data in sites.items():
        model, curves[site] = train_selected(recipe, data.training, {site: data.validation})
        record_test(result, site, model, data.testing, recipe)
    sizes = {site: len(data.validation) for site, data in sites.items()}
    result.curve = [_weighted_mean({site: curves[site][e] for site in sites}, sizes) for e in range(recipe.epochs)]
    return result


def centralised(sites: Mapping[str, SiteData], recipe: Recipe) -> BaselineResult:
    """One model on the pooled training data, selected on the pooled validation metric, tested per site."""
    pooled = ConcatDataset([data.training for data in sites.values()])
    model, curve = train_selected(recipe, pooled, {site: data.validation for site, data in sites.items()})
    result = BaselineResult({}, curve)
    for site, data in sites.items():
        record_test(result, site, model, data.testing, recipe)
    return result


def run_baselines(sites: Mapping[str, SiteData], recipe: Recipe, scores: Dict[str, List[Dict[str, float]]],
                  curves: Dict[str, tuple], keep_curves: bool,
                  more_scores: Optional[Dict[str, Dict[str, List[Dict[str, float]]]]] = None) -> None:
    """Local-only and centralised training with ``recipe``: append each one's per-site test metric to
    ``scores[method]`` (and each of ``recipe.test_metrics`` to ``more_scores[name][method]``, required then) and,
    if ``keep_curves``, put its validation curve (x = epochs 1..E) in ``curves[method]``."""
    for method, train in (("local only", local_only), ("centralised", centralised)):
        result = train(sites, recipe)
        scores.setdefault(method, []).append(result.test)
        for name, tested in result.more.items():
            more_scores.setdefault(name, {}).setdefault(method, []).append(tested)
        if keep_curves:
            curves[method] = (list(range(1, recipe.epochs + 1)), result.curve)

"""FedSM server: FedAvg for the global model and the selector, SoftPull for the personalised models."""

from __future__ import annotations

import os
from functools import partial
from typing import Dict, Literal

import torch
from pydantic import Field

from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.controller import CONFIG_FED_SERVER, SERVER_SITE, RoundController, ServerSettings, client_weights
from medfl.common.io import atomic_write_json
from medfl.common.networks import build_network
from medfl.common.params import SEP, Params, bundle, unbundle, weighted_mean
from medfl.common.protocol import NUM_TRAIN_STEPS
from medfl.common.settings import ConfigError, NetworkSpec
from medfl.common.validation import ArraySpec, ResultSpec, array_specs, check_sample_count

from . import networks  # noqa: F401  (registers the selector networks)
from .moments import moment_specs
from .protocol import GLOBAL, MOMENTS_NAME, PERSONAL_OF_LABEL, SELECT_THRESHOLD, SELECTOR, SITE_LABEL, SUPER_MODEL
from .softpull import soft_pull

SITE_LABELS_FILE = "site_labels.json"


def personal_name(client: str) -> str:
    return f"personal_{client}"


class FedSMSettings(ServerSettings):
    """FedSM server settings (its workflow ``args`` in ``config_fed_server.json``)."""

    network: NetworkSpec = Field(description="the segmentation network (global and personalised models)")
    selector_network: NetworkSpec = Field(description="the selector network; its num_classes = number of sites")
    soft_pull_lambda: float = Field(0.7, ge=0, le=1, description="SoftPull's lambda: the weight a site keeps")
    weighting: Literal["steps", "samples", "equal"] = Field("steps", description=(
        "weights of the global model's, the selector's and its moments' averages: local steps of the round "
        "(the original's NUM_STEPS_CURRENT_ROUND = len(train_loader)), training samples, or equal"))
    site_labels: Dict[str, int] = Field(default_factory=dict, description=(
        "{client: selector class}; empty: the connected clients in name order get 0, 1, ..."))
    select_threshold: float = Field(0.9, ge=0, le=1, description=(
        "cross-site evaluation of the super model: an image goes to the personalised model of the site the "
        "selector picks when its top softmax probability is strictly greater than this (the original's "
        "max_score > select_threshold, §6.4), else to the global model (1: the global model only)"))


class FedSMController(RoundController):
    """FedSM (Xu et al., CVPR 2022) workflow; every client gets {global, its personalised model, selector}.

    Per round: global and selector <- FedAvg of the clients' updates weighted by ``weighting`` (the original: the
    local steps, ``len(train_loader)``), the selector's Adam moments ``exp_avg`` / ``exp_avg_sq`` with the same
    weights when the clients' moment filters send them; personalised models <- :func:`soft_pull` with
    ``soft_pull_lambda``. The best version of every model is tracked on its validation metric. The selector (and
    its moments) is held once: the previous version is released before the new one is averaged.
    Settings: :class:`FedSMSettings`; the site labels must cover every client and number as many as the
    selector's classes (checked before round 0).
    """

    Settings = FedSMSettings

    def __init__(self, **settings):
        super().__init__(**settings)
        self.site_labels = dict(self.settings.site_labels)
        self.selector_moments: Params = {}
        self.selector_parameters: Dict[str, ArraySpec] = {}

    def initial_models(self) -> Dict[str, Params]:
        clients = sorted(c.name for c in self.engine.get_clients())
        if not self.site_labels:
            self.site_labels = {client: label for label, client in enumerate(clients)}
        unknown = sorted(set(clients) - set(self.site_labels))
        num_classes = self.settings.selector_network.args.get("num_classes")
        labels = sorted(self.site_labels.values())
        if unknown or num_classes != len(labels) or labels != list(range(len(labels))):
            raise ConfigError(f"site_labels {self.site_labels} must give every client (missing: {unknown}) one of the "
                              f"labels 0 .. num_classes - 1 of selector_network ({num_classes})",
                              path=CONFIG_FED_SERVER, site=SERVER_SITE)
        atomic_write_json(self.site_labels, os.path.join(self.get_app_dir(), SITE_LABELS_FILE))
        # the selector's trained parameters (their Adam moments come back), from a weightless copy of it
        selector = self.settings.selector_network
        with torch.device("meta"):
            trained = {name for name, _ in build_network(selector.name, **selector.args).named_parameters()}
        segmentation = self.build_initial_params()
        models = {"global": segmentation, "selector": self.build_initial_params(self.settings.selector_network)}
        self.selector_parameters = {k: v for k, v in array_specs(models["selector"]).items() if k in trained}
        models.update({personal_name(client): dict(segmentation) for client in clients})
        return models

    def payload_for(self, client: str) -> Params:
        models = {"global": self.models["global"], "personal": self.models[personal_name(client)],
                  "selector": self.models["selector"]}
        if self.selector_moments:
            models[MOMENTS_NAME] = self.selector_moments
        return bundle(models)

    def payload_meta(self, client: str) -> dict:
        return {SITE_LABEL: self.site_labels[client]}

    def expected_result(self, client: str, task: str, sent: FLModel) -> ResultSpec:
        """The bundle as sent, without the moments sent, plus every selector moment (``exp_avg`` and ``exp_avg_sq``
        of each trained parameter) or none (the client's moment filters may be off), and the count of local steps
        the averages are weighted by."""
        spec = super().expected_result(client, task, sent)
        if task == self.settings.train_task:
            prefix = f"{MOMENTS_NAME}{SEP}"
            spec.params = {k: v for k, v in spec.params.items() if not k.startswith(prefix)}
            moments = bundle({MOMENTS_NAME: moment_specs(self.selector_parameters)})
            spec.optional_groups = {"selector Adam moments": moments}
            spec.meta[NUM_TRAIN_STEPS] = partial(check_sample_count, maximum=self.settings.max_client_samples)
        return spec

    def model_for_metric(self, client: str, key: str) -> str:
        return personal_name(client) if key == "personal" else key

    def aggregate(self, results: Dict[str, FLModel]) -> None:
        updates = {client: unbundle(r.params) for client, r in results.items()}
        weights = client_weights(results, self.settings.weighting)
        self.models["global"] = weighted_mean([u["global"] for u in updates.values()], weights)
        # the clients sent full selectors and moments: the previous ones are not needed to average the new
        self.models["selector"], self.selector_moments = {}, {}
        self.models["selector"] = weighted_mean([u["selector"] for u in updates.values()], weights)
        with_moments = [u[MOMENTS_NAME] for u in updates.values() if MOMENTS_NAME in u]
        if len(with_moments) == len(updates):
            self.selector_moments = weighted_mean(with_moments, weights)
        elif with_moments:
            self.warning(f"only {len(with_moments)}/{len(updates)} clients sent selector moments; not syncing them")
        pulled = soft_pull({client: u["personal"] for client, u in updates.items()}, self.settings.soft_pull_lambda)
        self.models.update({personal_name(client): params for client, params in pulled.items()})

    def cross_site_models(self) -> Dict[str, Params]:
        """The global model, every personalised model (each scored as a plain segmentation model) and the super
        model: the selector with the global model and the personalised models by selector class."""
        by_label = sorted(self.site_labels, key=self.site_labels.get)
        models = {name: bundle({GLOBAL: self.models[name]}) for name in [GLOBAL, *map(personal_name, by_label)]}
        parts = {GLOBAL: self.models[GLOBAL], SELECTOR: self.models[SELECTOR]}
        parts.update({f"{PERSONAL_OF_LABEL}{self.site_labels[c]}": self.models[personal_name(c)] for c in by_label})
        models[SUPER_MODEL] = bundle(parts)
        return models

    def cross_site_meta(self) -> dict:
        return {SELECT_THRESHOLD: self.settings.select_threshold}

    def extra_state(self) -> dict:
        return {"selector_moments": self.selector_moments, "site_labels": self.site_labels}

    def load_extra_state(self, state: dict) -> None:
        self.selector_moments = state["selector_moments"]
        self.site_labels = state["site_labels"]

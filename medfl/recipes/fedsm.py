"""FedSM's recipe and its job: FedSM's workflow and client, the client filter pair that syncs the selector's
Adam moments, and the filters that send its large arrays in pieces.

The job's values are written once below and are exactly what ``jobs/fedsm_prostate/`` holds; the site labels and
the selector's number of classes follow from the sites.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

from nvflare.job_config.defs import FilterType

from medfl.common.pieces import PIECE_BYTES, JoinLargeArrays, SplitLargeArrays
from medfl.common.settings import ConfigError
from medfl.fedsm.controller import FedSMController
from medfl.fedsm.executor import FedSMExecutor
from medfl.fedsm.moments import AdamMomentsReceiver, AdamMomentsSender

from . import federations
from .base import JobSpec, MedflRecipe

SELECTOR_NETWORK = {"name": "vgg11", "args": {"in_channels": 1}}  # + num_classes: the number of sites

FEDSM_PROSTATE = JobSpec(
    name="fedsm_prostate",
    description="FedSM (Xu et al., CVPR 2022): global, SoftPull-personalised and selector models on prostate MRI",
    controller=FedSMController, executor=FedSMExecutor, workflow_id="fedsm",
    sites=federations.PROSTATE,
    server={"num_rounds": 100, "soft_pull_lambda": 0.7, "weighting": "steps", "best_weighting": "steps",
            "best_from_round": 1, "min_clients": 0, "resume_from": "", "task_check_period": 0.1},
    train={"data_root": "DATASET_ROOT/dataset_2D", "datalist": "DATASET_ROOT/datalist_2D",
           "network": {"name": "unet", "args": {"in_channels": 1, "out_channels": 1, "channels": [16, 32, 64, 128, 256],
                                                "strides": [2, 2, 2, 2], "num_res_units": 2}},
           "optimizer": {"name": "adam", "lr": 0.001}, "selector_network": SELECTOR_NETWORK,
           "selector_optimizer": {"name": "adam", "lr": 0.001}, "selector_epochs": 1, "local_epochs": 1,
           "batch_size": 1, "augment": False, "image_size": 256, "resize_mode": "bilinear", "seed": 0, "num_threads": 0,
           "device": "auto"},
    options={"sync_selector_moments": True, "array_piece_bytes": PIECE_BYTES},
)


class FedSMRecipe(MedflRecipe):
    """FedSM as an NVFlare recipe: :class:`~medfl.fedsm.controller.FedSMController`, the FedSM client, and (option
    ``sync_selector_moments``) the filters :class:`~medfl.fedsm.moments.AdamMomentsSender` (train results) and
    :class:`~medfl.fedsm.moments.AdamMomentsReceiver` (train and validate data) that average the selector's Adam
    moments as the original's ``SimpleMomentsFilter`` does. Site ``k`` of ``sites`` is the selector's class ``k``.

    With option ``array_piece_bytes`` (0: off) every array larger than that (the selector's 411 MB first classifier
    layer and its moments) travels in pieces (:mod:`medfl.common.pieces`): the server's task data and the clients'
    train results are cut by :class:`~medfl.common.pieces.SplitLargeArrays`, the clients put the task data back
    together first (:class:`~medfl.common.pieces.JoinLargeArrays`), the server its results before checking them.
    Only the transfer changes: the arrays arrive bit-identical."""

    jobs = {FEDSM_PROSTATE.name: FEDSM_PROSTATE}
    options = {"sync_selector_moments": "average the selector's Adam moments across sites (the client filter pair)",
               "array_piece_bytes": "send arrays larger than this many bytes in pieces of at most this size, so that "
                                    "only pieces are in flight (0: whole arrays)"}

    def _piece_bytes(self) -> int:
        value = self.method_options["array_piece_bytes"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"array_piece_bytes must be a number of bytes >= 0 (0: off), got {value!r}")
        return value

    def add_server_components(self) -> None:
        if self._piece_bytes():
            tasks = FedSMExecutor().task_names()
            self._job.to_server(SplitLargeArrays(self._piece_bytes()), filter_type=FilterType.TASK_DATA, tasks=tasks)

    def site_settings(self, sites: List[str], settings: Mapping[str, Any]) -> Dict[str, Any]:
        """Site ``k`` is the selector's class ``k``; a selector network given without ``num_classes`` gets one
        class per site (one given with another count is refused by the workflow's settings check)."""
        selector = settings.get("selector_network", self.spec.train["selector_network"])
        given = selector.get("args", {})
        args = {**given, "num_classes": given.get("num_classes", len(sites))}
        return {"site_labels": {site: label for label, site in enumerate(sites)},
                "selector_network": {**selector, "args": args}}

    def add_client_components(self, target: str) -> None:
        executor_tasks = ["train", "validate"]
        pieces = self._piece_bytes()
        if pieces:  # first in the task data chains: the moment filter sees whole arrays
            self._job.to(JoinLargeArrays(), target, filter_type=FilterType.TASK_DATA, tasks=executor_tasks)
            self._job.to(JoinLargeArrays(), target, filter_type=FilterType.TASK_DATA, tasks=["cross_evaluate"])
        if self.method_options["sync_selector_moments"]:
            self._job.to(AdamMomentsReceiver(), target, filter_type=FilterType.TASK_DATA, tasks=executor_tasks)
            self._job.to(AdamMomentsSender(), target, filter_type=FilterType.TASK_RESULT, tasks=["train"])
        if pieces:  # last in the result chain: after the moments are attached
            self._job.to(SplitLargeArrays(pieces), target, filter_type=FilterType.TASK_RESULT, tasks=["train"])

"""The shared base of medfl's NVFlare recipes: a :class:`MedflRecipe` subclass per method, a :class:`JobSpec` per job.

A recipe builds NVFlare's ``FedJob`` from the method's own workflow (server) and executor (clients), the tracking
components of every job (clients: ``TBWriter`` + ``ConvertToFedEvent``; server: a TensorBoard or an MLflow receiver)
and what the method adds (FedSM's moment filter pair). The job carries configuration only
(``set_app_packages(["medfl"])``): every site loads the installed ``medfl``.

A job's values live once, in its :class:`JobSpec`: ``server`` (the workflow's own arguments) and ``train`` (the
clients' ``config_train.json``; a key the workflow's settings also declare, such as ``network`` or ``seed``, is
written on both sides from this one value). Keyword arguments of a recipe override them, each routed the same way
to the side(s) whose settings declare it, and both sides are validated by their settings classes before anything
is written. The committed ``jobs/<job>/`` folders are these recipes exported (``python -m medfl export --all jobs``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Type, Union

from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE
from nvflare.apis.job_def import ALL_SITES
from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver
from nvflare.app_opt.tracking.tb.tb_writer import TBWriter
from nvflare.job_config.api import FedJob
from nvflare.recipe.poc_env import PocEnv
from nvflare.recipe.sim_env import SimEnv
from nvflare.recipe.spec import ExecEnv, Recipe

from medfl import __version__
from medfl.common.config import PLACEHOLDER
from medfl.common.controller import SERVER_SITE, RoundController
from medfl.common.executor import RoundExecutor
from medfl.common.job_version import MEDFL_VERSION_KEY
from medfl.common.settings import ConfigError, closest_key
from medfl.site import allow_medfl

APP_PACKAGE = "medfl"
TRAIN_CONFIG = "config_train.json"
FED_EVENT_PREFIX = "fed."
TRACKERS = ("tensorboard", "mlflow")
Tracker = Literal["tensorboard", "mlflow"]
# top-level keys of config_fed_server.json: how often the server lets clients ask for a task (seconds)
SERVER_RUNTIME = {"server": {"task_request_interval": 0.2}}
EVENT_CONVERTER_ID = "event_to_fed"
FILTER_KINDS = ("task_data_filters", "task_result_filters")  # filter lists of config_fed_{client,server}.json
RECEIVER_IDS = {"tensorboard": "tb_receiver", "mlflow": "mlflow_receiver"}
DataRoot = Union[None, str, Mapping[str, str]]


@dataclass(frozen=True)
class JobSpec:
    """One job of ``jobs/``: its classes, its federation and its values (the original's settings), in one place.

    ``server`` holds the workflow's arguments that only the server has; ``train`` holds ``config_train.json``, and
    each of its keys that the workflow's settings declare too (``network``, ``seed`` ...) is also a workflow
    argument. ``min_clients`` (meta.json) defaults to the number of sites.
    """

    name: str
    description: str
    controller: Type[RoundController]
    executor: Type[RoundExecutor]
    workflow_id: str
    sites: Tuple[str, ...]
    server: Mapping[str, Any]
    train: Mapping[str, Any]
    min_clients: Optional[int] = None
    options: Mapping[str, Any] = field(default_factory=dict)  # the recipe's own options (e.g. FedSM's filters)


def split_settings(spec: JobSpec, overrides: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(workflow args, config_train.json)`` of ``spec`` with ``overrides``, each key on the side(s) whose settings
    declare it; a key neither side declares is a :class:`ConfigError` naming the closest known key."""
    server_fields = spec.controller.Settings.model_fields
    train_fields = spec.executor.Settings.model_fields
    server = dict(spec.server)
    train = dict(spec.train)
    for key, value in overrides.items():
        if key not in server_fields and key not in train_fields:
            known = sorted({*server_fields, *train_fields})
            guess = closest_key(key, known)
            hint = f" (did you mean '{guess}'?)" if guess else ""
            raise ConfigError(f"unknown setting '{key}'{hint} of job {spec.name}; known: {', '.join(known)}")
        if key in train_fields:
            train[key] = value
        else:
            server[key] = value
    server.update({key: value for key, value in train.items() if key in server_fields})
    return server, train


def with_data_root(value: Any, root: Optional[str]) -> Any:
    """``value`` with the ``DATASET_ROOT`` placeholder of every string in it replaced by ``root`` (``None``: kept,
    each site then resolves it from its own ``DATASET_ROOT`` environment variable)."""
    if root is None:
        return value
    if isinstance(value, str):
        return value.replace(PLACEHOLDER, str(root))
    if isinstance(value, dict):
        return {k: with_data_root(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [with_data_root(v, root) for v in value]
    return value


def tracking_receiver(tracker: str, experiment: str):
    """The server's receiver of the clients' metrics: TensorBoard event files (``tb_events/<site>/``) or an MLflow
    store (``mlflow.db`` in the job's result folder, SQLite; one run per site), both fed by ``fed.`` analytics
    events."""
    events = [FED_EVENT_PREFIX + ANALYTIC_EVENT_TYPE]
    if tracker == "tensorboard":
        return TBAnalyticsReceiver(events=events)
    if tracker == "mlflow":
        try:
            from nvflare.app_opt.tracking.mlflow.mlflow_receiver import MLflowReceiver
        except ImportError as e:
            raise ConfigError(f"tracking 'mlflow' needs the mlflow package ({e}): "
                              "pip install 'medfl[tracking]'") from None
        return MLflowReceiver(kw_args={"experiment_name": experiment}, events=events)
    raise ConfigError(f"tracking must be one of {TRACKERS}, got {tracker!r}")


class MedflRecipe(Recipe):
    """A method's NVFlare recipe: the ``FedJob`` of one of its jobs (:attr:`jobs`), with settings overridden.

    Args:
        job: the job's name (default: the method's first job).
        sites: the federation's client names (default: the job's); FedSM derives its site labels from them.
        dataset_root: the folder that replaces ``DATASET_ROOT`` in every path of the job, or ``{site: folder}``
            (then every site gets its own app; the key ``server`` sets the server's); ``None`` keeps the
            placeholder, which each site resolves from its ``DATASET_ROOT`` environment variable. (Not
            ``data_root``: that is a client setting of several jobs, which ``**settings`` may set.)
        tracking: ``tensorboard`` (``tb_events/`` in the server's run folder) or ``mlflow`` (``mlflow.db``).
        name: the job's name in NVFlare (default: ``job``).
        **settings: workflow or client settings (``num_rounds=5``, ``network={...}``, ``cross_site_evaluation=True``,
            ``num_threads=1`` ...), or the method's options (:attr:`options`).
    """

    jobs: ClassVar[Dict[str, JobSpec]] = {}
    options: ClassVar[Dict[str, str]] = {}  # the method's own options and what they do

    def __init__(self, job: Optional[str] = None, *, sites: Optional[Sequence[str]] = None,
                 dataset_root: DataRoot = None, tracking: Tracker = "tensorboard", name: Optional[str] = None,
                 **settings):
        job = job or next(iter(self.jobs))
        if job not in self.jobs:
            raise ConfigError(f"{type(self).__name__} has no job {job!r}; its jobs: {', '.join(self.jobs)}")
        self.spec = self.jobs[job]
        self.sites: List[str] = list(sites or self.spec.sites)
        if not self.sites or len(set(self.sites)) != len(self.sites):
            raise ConfigError(f"job {job}: sites must be distinct client names, got {self.sites}")
        self.dataset_root = dataset_root
        self.tracking = tracking
        self.method_options = {key: settings.pop(key, default) for key, default in self.spec.options.items()}
        server, train = split_settings(self.spec, {**settings, **self.site_settings(self.sites, settings)})
        if isinstance(dataset_root, Mapping):
            unknown = sorted(set(dataset_root) - set(self.sites) - {SERVER_SITE})
            missing = sorted(set(self.sites) - set(dataset_root))
            if unknown or missing:
                raise ConfigError(f"job {job}: dataset_root must name every site {self.sites} (and optionally "
                                  f"'{SERVER_SITE}'); unknown {unknown}, missing {missing}")
        server_root = dataset_root.get(SERVER_SITE) if isinstance(dataset_root, Mapping) else dataset_root
        self.workflow = self.spec.controller(**with_data_root(server, server_root))
        self.train_config = train
        for site in self.sites if isinstance(dataset_root, Mapping) else [None]:
            self.spec.executor.Settings.load(self.train_values(site), TRAIN_CONFIG, site)
        self._files = tempfile.mkdtemp(prefix=f"medfl_{job}_")
        weakref.finalize(self, shutil.rmtree, self._files, True)
        min_clients = min(self.spec.min_clients or len(self.spec.sites), len(self.sites))
        # every site checks that it runs the medfl version the job names (medfl.common.job_version)
        fed_job = FedJob(name=name or job, min_clients=min_clients, meta_props={MEDFL_VERSION_KEY: __version__})
        fed_job.set_app_packages([APP_PACKAGE])
        fed_job.to_server(self.workflow, id=self.spec.workflow_id)
        fed_job.to_server(tracking_receiver(tracking, name or job), id=RECEIVER_IDS[tracking])
        fed_job.to_server(dict(SERVER_RUNTIME))
        super().__init__(fed_job)
        self.add_server_components()

    # ------------------------------------------------------------------ what a method may add
    def site_settings(self, sites: List[str], settings: Mapping[str, Any]) -> Dict[str, Any]:
        """Settings that follow from the federation's sites and the settings given (FedSM: its site labels and
        the selector's number of classes); default none."""
        return {}

    def add_server_components(self) -> None:
        """Components, filters ... a method adds to the server app; default none."""

    def add_client_components(self, target: str) -> None:
        """Components, filters ... a method adds to a client app (``target``: a site or ``@ALL``); default none."""

    # ------------------------------------------------------------------ the client apps
    def train_values(self, site: Optional[str]) -> Dict[str, Any]:
        """``config_train.json`` of ``site`` (``None``: of every site) as written: the settings given, defaults left
        out, ``DATASET_ROOT`` replaced where a data root was given."""
        root = self.dataset_root.get(site) if isinstance(self.dataset_root, Mapping) else self.dataset_root
        return with_data_root(self.train_config, root)

    def _prepare_client_apps(self) -> None:
        targets = self.sites if isinstance(self.dataset_root, Mapping) else [ALL_SITES]
        for target in targets:
            folder = Path(self._files) / target.replace("@", "_")
            folder.mkdir()
            settings = self.spec.executor.Settings.load(self.train_values(None if target == ALL_SITES else target),
                                                        TRAIN_CONFIG)
            (folder / TRAIN_CONFIG).write_text(json.dumps(settings.model_dump(mode="json", exclude_unset=True),
                                                          indent=4))
            executor = self.spec.executor()
            self._job.to(executor, target, tasks=executor.task_names())
            self._job.to(TBWriter(event_type=ANALYTIC_EVENT_TYPE), target, id=executor.analytic_sender_id)
            self._job.to(ConvertToFedEvent(events_to_convert=[ANALYTIC_EVENT_TYPE], fed_event_prefix=FED_EVENT_PREFIX),
                         target, id=EVENT_CONVERTER_ID)
            self.add_client_components(target)
            self._job.add_file_to(str(folder / TRAIN_CONFIG), target, app_folder_type="config")

    def export(self, job_dir: str, *args, **kwargs) -> None:
        """NVFlare's export, with each filter's task list sorted: NVFlare keeps it as a set, whose order changes
        from one Python process to the next, and the committed job folders must be reproducible."""
        super().export(job_dir, *args, **kwargs)
        for config in sorted((Path(job_dir) / self.name).glob("app*/config/config_fed_*.json")):
            content = json.loads(config.read_text())
            for kind in FILTER_KINDS:
                for entry in content.get(kind, []):
                    entry["tasks"] = sorted(entry.get("tasks", []))
            config.write_text(json.dumps(content, indent=4))

    # ------------------------------------------------------------------ environments
    def process_env(self, env: ExecEnv) -> None:
        """Before a run: let the simulator's sites build medfl's classes (SimEnv installs NVFlare's default
        class allow-list only); refuse a POC that re-provisions without medfl's site policy."""
        if isinstance(env, SimEnv):
            allow_medfl(Path(env.workspace_root) / self.name)
        elif isinstance(env, PocEnv) and not env.project_conf_path:
            raise ConfigError("PocEnv provisions fresh sites whose class allow-list lacks medfl; use "
                              "medfl.recipes.envs.poc_env(clients), whose project file adds medfl's site policy")

    @classmethod
    def job_options(cls, job: str) -> Dict[str, str]:
        """``{setting: description}`` of every setting of ``job`` (workflow and clients) and the method's options."""
        spec = cls.jobs[job]
        described = {}
        for settings in (spec.controller.Settings, spec.executor.Settings):
            for key, info in settings.model_fields.items():
                described.setdefault(key, info.description or "")
        return {**dict(sorted(described.items())), **{k: cls.options[k] for k in spec.options}}

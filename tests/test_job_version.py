"""A job names the medfl version it needs; the server and every client refuse it before round 0 when they run
another one, naming both versions."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

import medfl
from medfl.common.job_version import MEDFL_VERSION_KEY, version_problem
from medfl.common.protocol import HEARTBEAT_TOPIC
from medfl.fedavg.controller import FedAvgController
from medfl.federations.prostate2d.client import ProstateSegmentationExecutor

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted(p for p in (ROOT / "jobs").iterdir() if (p / "meta.json").is_file())
OTHER = "0.0.1"


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_every_job_needs_the_current_version(job):
    assert json.loads((job / "meta.json").read_text()).get(MEDFL_VERSION_KEY) == medfl.__version__


def test_the_same_version_passes_and_another_is_refused_naming_both():
    assert version_problem({MEDFL_VERSION_KEY: medfl.__version__}) is None
    problem = version_problem({MEDFL_VERSION_KEY: OTHER})
    assert problem.startswith(f"the job needs medfl {OTHER} (meta.json '{MEDFL_VERSION_KEY}'), but this site runs "
                              f"medfl {medfl.__version__} from {Path(medfl.__file__).parent}; install "
                              f"medfl=={OTHER} at this site")


@pytest.mark.parametrize("meta", [{}, None], ids=["no key", "no meta"])
def test_a_job_that_names_no_version_is_refused(meta):
    assert f"the job's meta.json names no '{MEDFL_VERSION_KEY}'" in version_problem(meta)


def start_run_context(meta: dict, engine, site: str = "") -> FLContext:
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.JOB_META, meta, private=False, sticky=False)
    fl_ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    return fl_ctx


def test_the_server_refuses_another_version_before_anything_is_built(tmp_path):
    handlers = {}
    engine = SimpleNamespace(register_aux_message_handler=lambda topic, handler: handlers.update({topic: handler}))
    controller = FedAvgController(num_rounds=1, network={"name": "unet", "args": {"channels": [4, 8], "strides": [2],
                                                                                  "num_res_units": 0}})
    controller.handle_event(EventType.START_RUN, start_run_context({MEDFL_VERSION_KEY: OTHER}, engine))
    panics = []
    controller.panic = panics.append
    controller.initial_models = lambda: pytest.fail("a refused job builds no model")
    controller.run()
    (message,) = panics
    assert message.startswith(f"[server] the job needs medfl {OTHER} (meta.json 'medfl_version'), but this site runs "
                              f"medfl {medfl.__version__}")
    assert list(handlers) == [HEARTBEAT_TOPIC], "the server listens to the clients' heartbeats"


def test_a_client_refuses_another_version_and_fails_every_task():
    beats = []
    engine = SimpleNamespace(new_context=FLContext, fire_event=lambda event, fl_ctx: None,
                             fire_and_forget_aux_request=lambda topic, request, fl_ctx: beats.append(topic))
    executor = ProstateSegmentationExecutor()
    fl_ctx = start_run_context({MEDFL_VERSION_KEY: OTHER}, engine, site="client_MSD")
    executor.handle_event(EventType.START_RUN, fl_ctx)
    try:
        assert executor._setup_error.startswith(f"[client_MSD] the job needs medfl {OTHER} (meta.json "
                                                f"'medfl_version'), but this site runs medfl {medfl.__version__}")
        reply = executor.execute("train", Shareable(), fl_ctx, abort_signal=None)
        assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    finally:
        executor.handle_event(EventType.END_RUN, fl_ctx)
    assert beats and set(beats) == {HEARTBEAT_TOPIC}, "the client's first heartbeat goes out at the start of the run"

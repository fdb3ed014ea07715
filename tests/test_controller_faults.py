"""RoundController with a dead client (NVFlare deems it disconnected, or it stops showing signs of life) or a rejected
result: skip it, then go on (``min_clients`` met) or stop naming it."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Dict, List, Set

import numpy as np
import pytest

from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.fl_model import FLModel

from medfl.common.controller import RoundController
from medfl.common.liveness import Liveness
from medfl.common.protocol import HEARTBEAT_TOPIC, NUM_TRAIN_SAMPLES, NUM_VAL_SAMPLES
from medfl.common.settings import ConfigError

CLIENTS = ["site-a", "site-b", "site-c"]
SENT = {"global/w": np.zeros(2, np.float32)}


def valid_result(client: str, round_number: int = 0) -> FLModel:
    """What an honest client sends back for the train task: the payload's arrays, its sample counts, the round."""
    return FLModel(params={"global/w": np.ones(2, np.float32)}, metrics={"global": 0.5}, current_round=round_number,
                   meta={"client_name": client, NUM_TRAIN_SAMPLES: 10, NUM_VAL_SAMPLES: 5})


class FakeRounds(RoundController):
    """Clients answer at once, except the dead ones (NVFlare gives them a disconnect time)."""

    def __init__(self, dead: List[str], **kwargs):
        super().__init__(num_rounds=1, task_check_period=0.01, **kwargs)
        self.dead = dead
        self.sent: List[str] = []
        self.messages: Dict[str, List[str]] = {"panic": [], "warning": [], "error": []}
        self.abort_signal = SimpleNamespace(triggered=False)

    def initial_models(self):
        return {}

    def payload_for(self, client):
        return dict(SENT)

    def aggregate(self, results):
        pass

    def send_model(self, task_name, data, targets, timeout, callback):
        self.sent += targets
        callback(valid_result(targets[0], data.current_round))

    def get_num_standing_tasks(self):
        return 0

    def get_client_disconnect_time(self, client_name):
        return 123.0 if client_name in self.dead else None

    def panic(self, reason):
        self.messages["panic"].append(reason)

    def warning(self, msg):
        self.messages["warning"].append(msg)

    def error(self, msg):
        self.messages["error"].append(msg)


def test_dead_client_gets_no_task_and_the_round_goes_on_with_min_clients():
    controller = FakeRounds(dead=["site-b"], min_clients=2)
    results = controller.scatter_and_gather("train", CLIENTS, 0)
    assert sorted(results) == ["site-a", "site-c"] and controller.sent == ["site-a", "site-c"]
    assert not controller.messages["panic"]
    assert "continuing with 2 of 3 clients" in controller.messages["warning"][-1]
    assert "disconnected: ['site-b']" in controller.messages["warning"][-1]


@pytest.mark.parametrize("min_clients", [0, 3])
def test_dead_client_stops_the_run_naming_it(min_clients):
    controller = FakeRounds(dead=["site-b"], min_clients=min_clients)
    assert controller.scatter_and_gather("train", CLIENTS, 4) is None
    (message,) = controller.messages["panic"]
    assert message == ("round 4: task 'train' got 2 results, needs 3; "
                       "no result from ['site-b'] (disconnected: ['site-b'])")


def test_no_dead_client_no_message():
    controller = FakeRounds(dead=[])
    assert list(controller.scatter_and_gather("train", CLIENTS, 0)) == CLIENTS
    assert controller.messages == {"panic": [], "warning": [], "error": []}


class LateRounds(FakeRounds):
    """Each result arrives from another thread after ``delay`` s; NVFlare drops the finished tasks from its
    standing list only at its next task check, ``task_check`` s after they were sent."""

    def __init__(self, delay: float, task_check: float, **kwargs):
        super().__init__(dead=[], **kwargs)
        self._task_check_period = task_check
        self.delay = delay
        self.tasks_checked_at = 0.0

    def send_model(self, task_name, data, targets, timeout, callback):
        self.sent += targets
        self.tasks_checked_at = time.perf_counter() + self._task_check_period
        threading.Timer(self.delay, callback, [valid_result(targets[0], data.current_round)]).start()

    def get_num_standing_tasks(self):
        return len(self.sent) if time.perf_counter() < self.tasks_checked_at else 0


def test_the_round_goes_on_at_the_last_result_not_at_the_next_task_check():
    controller = LateRounds(delay=0.05, task_check=3.0)
    start = time.perf_counter()
    assert sorted(controller.scatter_and_gather("train", CLIENTS, 0)) == CLIENTS
    assert time.perf_counter() - start < 1.0


def test_results_come_in_client_order_whatever_the_arrival_order():
    """Aggregation must sum in one order in every run: results are ordered by client name, not by arrival."""
    controller = FakeRounds(dead=[])
    controller.get_num_standing_tasks = lambda: len(CLIENTS) - len(controller._results)

    def answer_in_reverse():
        for client in reversed(CLIENTS):
            time.sleep(0.02)
            controller._collect(valid_result(client))

    def send_model(task_name, data, targets, timeout, callback):
        controller.sent.extend(targets)
        if len(controller.sent) == len(CLIENTS):  # every task is out: the answers come, last client first
            threading.Thread(target=answer_in_reverse).start()

    controller.send_model = send_model
    assert list(controller.scatter_and_gather("train", CLIENTS, 0)) == CLIENTS


class BadSiteRounds(FakeRounds):
    """Every client answers; ``bad`` answers with a wrong shape (the broadcastable (1,) of the issue)."""

    def __init__(self, bad: str, **kwargs):
        super().__init__(dead=[], **kwargs)
        self.bad = bad

    def send_model(self, task_name, data, targets, timeout, callback):
        result = valid_result(targets[0], data.current_round)
        if targets[0] == self.bad:
            result.params["global/w"] = np.ones(1, np.float32)
        callback(result)


REJECTION = "round 2: rejected the result of site-b: global/w has shape (1,) but (2,) is expected"


def test_a_rejected_result_is_logged_and_left_out_and_the_round_goes_on_with_min_clients():
    controller = BadSiteRounds(bad="site-b", min_clients=2)
    results = controller.scatter_and_gather("train", CLIENTS, 2)
    assert sorted(results) == ["site-a", "site-c"]
    assert controller.messages["error"] == [REJECTION]
    assert not controller.messages["panic"]
    assert controller.messages["warning"] == [
        "round 2: continuing with 2 of 3 clients (min_clients=2); rejected the result of site-b: global/w has shape "
        "(1,) but (2,) is expected"]


def test_a_rejected_result_stops_the_run_with_its_reason_when_min_clients_needs_it():
    controller = BadSiteRounds(bad="site-b")
    assert controller.scatter_and_gather("train", CLIENTS, 2) is None
    assert controller.messages["panic"] == [
        "round 2: task 'train' got 2 results, needs 3; rejected the result of site-b: global/w has shape (1,) but "
        "(2,) is expected"]


def test_a_result_of_a_client_that_got_no_task_is_rejected():
    controller = FakeRounds(dead=[])
    assert controller.scatter_and_gather("train", CLIENTS[:2], 0) is not None
    assert controller._collect(valid_result("site-z")) is False
    assert controller.messages["error"] == [
        "round 0: rejected the result of site-z: no task was sent to it in this round"]


class SilentRounds(FakeRounds):
    """Results arrive from another thread after ``delay`` s, except from ``silent`` (a killed client: it never
    answers and sends no heartbeat); NVFlare keeps a task standing until it is answered or cancelled. The clients in
    ``beating`` send a heartbeat every ``beat`` s, as a slow but living client does."""

    def __init__(self, silent=(), delay=0.02, beating=(), beat=0.05, timeout=0.3, **kwargs):
        super().__init__(dead=[], **kwargs)
        self.silent, self.delay, self.beat = set(silent), delay, beat
        self.liveness = Liveness(timeout)
        self.standing: Set[str] = set()
        self.cancelled: List[str] = []
        self._stop = threading.Event()
        for client in beating:
            threading.Thread(target=self._beat, args=(client,), daemon=True).start()

    def _beat(self, client):
        while not self._stop.wait(self.beat):
            self.liveness.heard_from(client)

    def send_model(self, task_name, data, targets, timeout, callback):
        self.sent += targets
        self.standing.update(targets)
        if targets[0] not in self.silent:
            threading.Timer(self.delay, self._answer, [callback, valid_result(targets[0], data.current_round)]).start()

    def _answer(self, callback, result):
        self.standing.discard(result.meta["client_name"])
        callback(result)

    def get_num_standing_tasks(self):
        return len(self.standing)

    def cancel_all_tasks(self, *args, **kwargs):
        self.cancelled += sorted(self.standing)
        self.standing.clear()


def test_a_silent_client_is_deemed_dead_within_client_timeout_and_the_run_goes_on_without_it():
    controller = SilentRounds(silent=["site-b"], min_clients=2)
    start = time.perf_counter()
    results = controller.scatter_and_gather("train", CLIENTS, 0)
    assert sorted(results) == ["site-a", "site-c"]
    assert 0.3 < time.perf_counter() - start < 2.0, "given up after client_timeout, not before, not much later"
    assert controller.cancelled == ["site-b"], "its task is cancelled"
    assert controller.messages["warning"] == [
        "round 0: no sign of life from ['site-b'] for 0.3 s (client_timeout) while holding task 'train': deeming "
        "them dead",
        "round 0: continuing with 2 of 3 clients (min_clients=2); no result from ['site-b'] (disconnected: []; "
        "no sign of life for 0.3 s: ['site-b'])"]
    controller.sent, controller.messages["warning"] = [], []
    assert sorted(controller.scatter_and_gather("train", CLIENTS, 1)) == ["site-a", "site-c"]
    assert controller.sent == ["site-a", "site-c"], "a client deemed dead gets no further task"
    assert controller.messages["warning"][0] == \
        "round 1: not sending task 'train' to clients deemed dead earlier in this run ['site-b']"


def test_a_silent_client_stops_the_run_naming_it_when_every_client_is_needed():
    controller = SilentRounds(silent=["site-b"])
    assert controller.scatter_and_gather("train", CLIENTS, 0) is None
    assert controller.messages["panic"] == [
        "round 0: task 'train' got 2 results, needs 3; no result from ['site-b'] (disconnected: []; no sign of life "
        "for 0.3 s: ['site-b'])"]


def test_a_slow_client_that_keeps_sending_heartbeats_is_waited_for():
    controller = SilentRounds(delay=1.0, beating=CLIENTS)
    try:
        assert list(controller.scatter_and_gather("train", CLIENTS, 0)) == CLIENTS
    finally:
        controller._stop.set()
    assert controller.messages == {"panic": [], "warning": [], "error": []}


def test_client_timeout_zero_gives_up_on_nobody():
    assert Liveness(0).silent(CLIENTS, since=-1e9) == []


def test_a_heartbeat_counts_for_its_sender():
    liveness = Liveness(30, clock=lambda: 100.0)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, "site-b")
    fl_ctx = FLContext()
    fl_ctx.set_peer_context(peer)
    assert liveness.handle_heartbeat(HEARTBEAT_TOPIC, Shareable(), fl_ctx).get_return_code() == ReturnCode.OK
    liveness.clock = lambda: 120.0
    assert liveness.silent(CLIENTS, since=0.0) == ["site-a", "site-c"]


@pytest.mark.parametrize("timeout", [1, 29.9])
def test_client_timeout_is_several_heartbeats_or_off(timeout):
    with pytest.raises(ConfigError, match=r"client_timeout.*0 \(off\) or at least 30 s"):
        FakeRounds(dead=[], client_timeout=timeout)
    assert FakeRounds(dead=[], client_timeout=0).liveness.timeout == 0

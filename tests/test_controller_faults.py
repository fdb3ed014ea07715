"""RoundController with a dead client: skip it, then go on (``min_clients`` met) or stop naming it."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Dict, List

import pytest

from medfl.common.controller import RoundController

CLIENTS = ["site-a", "site-b", "site-c"]


class FakeRounds(RoundController):
    """Clients answer at once, except the dead ones (NVFlare gives them a disconnect time)."""

    def __init__(self, dead: List[str], **kwargs):
        super().__init__(num_rounds=1, task_check_period=0.01, **kwargs)
        self.dead = dead
        self.sent: List[str] = []
        self.messages: Dict[str, List[str]] = {"panic": [], "warning": []}
        self.abort_signal = SimpleNamespace(triggered=False)

    def initial_models(self):
        return {}

    def payload_for(self, client):
        return {}

    def aggregate(self, results):
        pass

    def send_model(self, task_name, data, targets, timeout, callback):
        self.sent += targets
        callback(SimpleNamespace(meta={"client_name": targets[0]}))

    def get_num_standing_tasks(self):
        return 0

    def get_client_disconnect_time(self, client_name):
        return 123.0 if client_name in self.dead else None

    def panic(self, reason):
        self.messages["panic"].append(reason)

    def warning(self, msg):
        self.messages["warning"].append(msg)


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
    assert controller.messages == {"panic": [], "warning": []}


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
        threading.Timer(self.delay, callback, [SimpleNamespace(meta={"client_name": targets[0]})]).start()

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
    controller.send_model = lambda task_name, data, targets, timeout, callback: controller.sent.extend(targets)
    controller.get_num_standing_tasks = lambda: len(CLIENTS) - len(controller._results)

    def answer_in_reverse():
        for client in reversed(CLIENTS):
            time.sleep(0.02)
            controller._collect(SimpleNamespace(meta={"client_name": client}))

    threading.Thread(target=answer_in_reverse).start()
    assert list(controller.scatter_and_gather("train", CLIENTS, 0)) == CLIENTS

"""Test configuration: make the project package importable and locate the shared sample data."""

import os
from pathlib import Path

import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]

SHARED_DATA = Path(os.environ.get("MEDFL_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only sample data beside the checkout (``../shared/data``)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"sample data folder not found: {SHARED_DATA} (set MEDFL_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def server_mmap_threshold_stays_in_server_processes(monkeypatch):
    """Controllers built in this process leave its mmap threshold alone: fixing it is a setting of a server's
    process (``fix_mmap_threshold``), and the tests' in-process training would take fresh page faults at every
    step for the rest of the session (test_client_state ran 1.7x slower). Simulator and POC runs set it in their
    own server processes; ``test_memory_guard.py`` checks the call and its effect in a child process."""
    import medfl.common.controller as controller

    monkeypatch.setattr(controller, "fix_mmap_threshold", lambda nbytes: False)


@pytest.fixture
def one_torch_thread():
    """One torch thread, as the jobs' clients in the tests (``num_threads`` 1): tiny models on shared cores run much
    faster without intra-op threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


PROSTATE_CLIENTS = ("client_I2CVB", "client_MSD", "client_NCI_ISBI_3T")
PROSTATE_SIZE = 32  # the size the prostate-slice clients resize to in tests (the jobs: 256, the original's)
PROSTATE_TRAIN = {"image_size": PROSTATE_SIZE}  # config_train.json overrides of every prostate-slice job in tests
SMALL_SELECTOR = {"name": "selector_cnn", "args": {"in_channels": 1, "num_classes": 3}}  # FedSM's fast option


@pytest.fixture(scope="session")
def demo_prostate(tmp_path_factory) -> Path:
    """The synthetic 3-site prostate federation, prepared as the README does (the original's preparation: 8-bit
    slices at each site's own size; the clients resize them, to :data:`PROSTATE_SIZE` in tests)."""
    from medfl.federations.prostate2d.demo import make_demo_federation
    from medfl.federations.prostate2d.preparation import prepare

    root = tmp_path_factory.mktemp("demo_prostate")
    make_demo_federation(root / "raw", cases_per_site=6, seed=0)
    prepare(root / "raw", root, source="saml")
    return root

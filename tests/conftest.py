"""Test configuration: make the project package importable and locate the shared sample data."""

import os
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT / "custom"))

SHARED_DATA = Path(os.environ.get("MEDFL_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only sample data beside the checkout (``../shared/data``)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"sample data folder not found: {SHARED_DATA} (set MEDFL_SHARED_DATA)")
    return SHARED_DATA

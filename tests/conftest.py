"""Shared fixtures. Prefect runs against a throw-away local database inside the work tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("PREFECT_HOME", str(REPO / ".prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    p = SHARED_DATA / relative
    if not p.exists():
        pytest.skip(f"real dataset not available: {p} (tests read ../shared/data beside the repository)")
    return p


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield

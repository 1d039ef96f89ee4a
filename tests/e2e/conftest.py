"""End-to-end fixtures: a bare remote with a working clone, and a `Tidegate` runner whose teardown
stops its `tidegate up` processes and then kills every replica process under the test's state dir
(`up` leaves replicas running on purpose), failing the test if any survives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import APP, Remote, Tidegate, free_port, kill_replicas, replica_processes
from tests.support.git_repo import bare_remote


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    bare, work = bare_remote(tmp_path)
    (work / "app.py").write_text(APP)
    return Remote(bare, work)


@pytest.fixture
def tidegate(tmp_path: Path) -> Iterator[Tidegate]:
    state = tmp_path / "state"
    logs = tmp_path / "logs"
    logs.mkdir()
    tg = Tidegate(state, free_port(), logs)
    try:
        yield tg
    finally:
        tg.stop_all()
        kill_replicas(state)
        assert not replica_processes(state)

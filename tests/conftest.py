import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import DBusDaemon, Simulation  # noqa: E402


@pytest.fixture
def dbus() -> Iterator[DBusDaemon]:
    bus = DBusDaemon()
    yield bus
    bus.stop()


@pytest.fixture
def sim(dbus: DBusDaemon) -> Iterator[Simulation]:
    s = Simulation(dbus)
    yield s
    s.stop()

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import DBusDaemon, Simulation  # noqa: E402
from logind import Logind, system_bus  # noqa: E402, F401 (system_bus: a fixture)


@pytest.fixture(autouse=True, scope="session")
def system_logind() -> Iterator[Logind]:
    """A host has systemd-logind on its system bus, so every gvtd under test finds one (and
    takes its suspend lock there); tests of suspend run their own. Only root uses it."""
    bus = DBusDaemon(guests=())
    logind = Logind(bus)
    saved = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
    yield logind
    if saved is None:
        os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
    else:
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = saved
    logind.stop()
    bus.stop()


@pytest.fixture
def dbus() -> Iterator[DBusDaemon]:
    """The simulation's bus, which the stranger may use too."""
    bus = DBusDaemon()
    yield bus
    bus.stop()


@pytest.fixture
def sim(dbus: DBusDaemon) -> Iterator[Simulation]:
    s = Simulation(dbus)
    yield s
    s.stop()

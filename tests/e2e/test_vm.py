"""gvtd on a real kernel: a Debian 13 VM with the kernel's sample mdev drivers (mtty, mdpy,
mbochs), real udev, systemd as PID 1, the system bus and polkitd, across a real reboot.

One VM run (tests/e2e/vm.py) serves the whole module; the guest only records what it sees
(tests/e2e/guest/scenario.py) and each test here asserts one step of it. The console log,
the guest's journal and the raw results stay in .cache/e2e/last-run/ after every run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vm  # noqa: E402

pytestmark = pytest.mark.timeout(900)


class Results:
    def __init__(self, run: vm.Run) -> None:
        self.run = run

    def step(self, phase: int, name: str) -> dict[str, Any]:
        found = [r for r in self.run.results if r["phase"] == phase and r["step"] == name]
        where = self.run.log_paths()
        assert found, f"the guest reported no step {name!r} in boot {phase} ({where})"
        assert "error" not in found[-1], f"{name}: {found[-1]['error']} ({where})"
        return found[-1]


@pytest.fixture(scope="module")
def guest() -> Results:
    run = vm.run(timeout=600)
    print(f"e2e run kept in {run.dir}")
    assert run.returncode is not None, f"the VM did not power off in time ({run.log_paths()})"
    return Results(run)


def test_gvtd_service_is_active_with_its_status(guest: Results) -> None:
    s = guest.step(1, "service")
    assert s["active"] == "active"
    assert s["show"]["Type"] == "notify" and s["show"]["NRestarts"] == "0"
    assert s["show"]["StatusText"]
    assert f"Status: \"{s['show']['StatusText']}\"" in s["status"]


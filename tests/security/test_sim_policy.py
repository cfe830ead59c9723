"""`gvtd --simulate --system` on a bus whose policy refuses it a name: one line naming the
name and the policy that decides, exit status 1, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import sysbus
from harness import TIMEOUT
from sysbus import SystemBus


@pytest.mark.parametrize("refused, removed, policy", [
    # the test-only grant of the supervisor's name taken out of the bus's configuration
    ("io.github.gvtd1.Simulator", '<allow own="io.github.gvtd1.Simulator"/>',
     "bus's configuration"),
    # the shipped policy not installed: nothing lets root own gvtd's name
    ("io.github.gvtd1", "<include>{shipped}</include>", "io.github.gvtd1.conf"),
])
def test_a_refused_name_is_one_line(monkeypatch: pytest.MonkeyPatch, refused: str,
                                    removed: str, policy: str) -> None:
    assert removed in sysbus.CONFIG
    monkeypatch.setattr(sysbus, "CONFIG", sysbus.CONFIG.replace(removed, ""))
    bus = SystemBus()
    try:
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=bus.address)
        env.pop("NOTIFY_SOCKET", None)
        proc = subprocess.run([sys.executable, "-m", "gvtd.daemon", "--simulate", "--system"],
                              env=env, capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        bus.stop()
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    # libfuse 3.14 (Debian 12)'s own words, not gvtd's: at every mount, and when the second
    # of the emulated kernel's two FUSE sessions (sysfs, kmsg) ends, since only one session
    # of a process holds the signal handlers
    libfuse = ("Ignoring invalid max threads value",
               "fuse: fuse_remove_signal_handlers: unknown session")
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith(libfuse)]
    assert len(lines) == 1, proc.stderr
    assert f"own {refused} " in lines[0] and policy in lines[0]

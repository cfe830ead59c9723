"""`make demo` runs to its end: every command it shows answers as it expects (the demo
exits non-zero at the first that does not), on its own buses and emulated hosts."""

from __future__ import annotations

import os
import subprocess
import sys

from harness import TIMEOUT


def test_make_demo_runs_to_its_end() -> None:
    # The demo brings its own buses and logind, as on a machine without gvtd: not the
    # test session's system bus
    env = {k: v for k, v in os.environ.items() if k != "DBUS_SYSTEM_BUS_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "gvtd.sim.demo"], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT * 4)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "+GRUB_CMDLINE_LINUX_DEFAULT=" in out or "i915.enable_guc=0" in out  # setup
    assert "gvt-client --session new win11" in out and "view --print win11" in out
    assert "(monitor) vgpu win10: Health -> failed" in out
    assert "(monitor) domain win10: State -> shut-off" in out
    # the Alder Lake laptop: a VF on vfio-pci, refused while win10 runs, taken back, rebooted
    assert "sriov    0000:00:02.1" in out and "<hostdev mode=\"subsystem\" type=\"pci\"" in out
    assert "would take its VF from the running domain win10" in out
    assert "(monitor) vgpu win11: State -> active" in out
    assert out.rstrip().endswith("# Done; cleaning up")

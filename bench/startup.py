"""Start-up figures of issue "foundation": time to READY=1 with 8 definitions, gvt-client
list --json wall time, and the daemon's RSS; each against a baseline measured in the same run.

    .venv/bin/python bench/startup.py [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (Client, Figure, Section, goal_max, kernel_split,  # noqa: E402
                    python_start_ms, text_table, wall_ms)

from gvtd import names  # noqa: E402
from gvtd.sim.session import DBusDaemon, SimulatedHost  # noqa: E402


def memory_mb(pid: int) -> dict[str, float]:
    """Rss, Pss and what is the process's alone (Private_*), from smaps_rollup: RSS counts
    every page of every shared library mapped, most of them shared with other processes
    (libvirt's 56 libraries with libvirtd)."""
    out = {"Private": 0.0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key] = int(rest.split()[0]) / 1024
        elif key in ("Private_Clean", "Private_Dirty"):
            out["Private"] += int(rest.split()[0]) / 1024
    return out


def measure(rounds: int = 15, verbose: bool = False) -> Section:
    sec = Section("Start-up")
    args = argparse.Namespace(rounds=rounds, verbose=verbose)
    bus = DBusDaemon()
    # the i915 parent plus sample (mtty) parents: 8 definitions need more than one GPU's room
    host = SimulatedHost(bus.address, profile="multi", stderr=None if args.verbose else subprocess.DEVNULL)
    client = Client(bus.address)
    sim = dict(dest=names.SIMULATOR_BUS_NAME, path=names.SIMULATOR_PATH,
               iface=names.SIMULATOR_IFACE)
    try:
        for i in range(2):
            client.define(name=f"vm{i}", type="i915-GVTg_V5_8")
        for i in range(2, 8):
            client.define(name=f"vm{i}", type="mtty-1", parent=f"mtty{i % 2}")
        active = sum(v["State"] == "active" for v in client.vgpus().values())
        assert active == 8, f"only {active} of 8 vGPUs active"

        ready, kernel, baseline = [], [], []
        for _ in range(args.rounds):
            baseline.append(python_start_ms())
            client.call("Reboot", **sim)  # returns once the restarted gvtd sent READY=1
            props = client.props(names.SIMULATOR_PATH, names.SIMULATOR_IFACE,
                                 dest=names.SIMULATOR_BUS_NAME)
            ready.append(props["StartupMs"])
            kernel.append(props["StartupKernelMs"])
        active = sum(v["State"] == "active" for v in client.vgpus().values())
        assert active == 8, f"after reboots only {active} of 8 vGPUs active"

        # the same start with the 8 vGPUs still there (a restart, not a reboot): what the
        # daemon costs without the emulated kernel's creates and their uevents
        restart = []
        for _ in range(args.rounds):
            client.call("RestartDaemon", **sim)
            restart.append(client.props(names.SIMULATOR_PATH, names.SIMULATOR_IFACE,
                                        dest=names.SIMULATOR_BUS_NAME)["StartupMs"])

        listing, list_base = [], []
        cmd = [sys.executable, "-m", "gvtd.client.main", "--session", "list", "--json"]
        for _ in range(args.rounds):
            list_base.append(python_start_ms())
            listing.append(wall_ms(cmd, host.env))

        pid = client.props(names.SIMULATOR_PATH, names.SIMULATOR_IFACE,
                           dest=names.SIMULATOR_BUS_NAME)["DaemonPid"]
        mem = memory_mb(pid)

        b = sec.add(Figure("floor: python3 -c pass (start-up rounds)", baseline))
        sec.add(goal_max(Figure("start to READY=1, 8 auto vGPUs recreated", ready, baseline=b),
                         400))
        kernel_split(sec, list(zip(ready, kernel)), "8 creates", baseline=b)
        sec.add(Figure("start to READY=1, 8 vGPUs already present", restart, baseline=b))
        b = sec.add(Figure("floor: python3 -c pass (list rounds)", list_base))
        sec.add(goal_max(Figure("gvt-client list --json (8 vGPUs)", listing, baseline=b), 120))
        sec.add(goal_max(Figure("daemon RSS after start", [mem["Rss"]], unit="MB"), 50))
        sec.add(Figure("  ... its proportional share (PSS)", [mem["Pss"]], unit="MB"))
        sec.add(Figure("  ... its own pages alone (USS)", [mem["Private"]], unit="MB"))
        return sec
    finally:
        client.close()
        host.stop()
        bus.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    ap.add_argument("--verbose", action="store_true", help="show the daemon's log")
    args = ap.parse_args()
    print(text_table([measure(3 if args.quick else args.rounds, args.verbose)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

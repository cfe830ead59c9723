"""Start-up figures of issue "foundation": time to READY=1 with 8 definitions, gvt-client
list --json wall time, and the daemon's RSS; each against a baseline measured in the same run.

    .venv/bin/python bench/startup.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import Client  # noqa: E402

from gvtd import names  # noqa: E402
from gvtd.sim.session import DBusDaemon, SimulatedHost  # noqa: E402


def figures(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else samples * 3
    return (f"median {statistics.median(samples):7.1f}  IQR {q[0]:6.1f}-{q[2]:6.1f}  "
            f"min {min(samples):6.1f}  max {max(samples):6.1f}")


def wall_ms(argv: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - t) * 1000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--verbose", action="store_true", help="show the daemon's log")
    args = ap.parse_args()
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

        ready, baseline = [], []
        for _ in range(args.rounds):
            baseline.append(wall_ms([sys.executable, "-c", "pass"]))
            client.call("Reboot", **sim)  # returns once the restarted gvtd sent READY=1
            ready.append(client.props(names.SIMULATOR_PATH, names.SIMULATOR_IFACE,
                                      dest=names.SIMULATOR_BUS_NAME)["StartupMs"])
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
            list_base.append(wall_ms([sys.executable, "-c", "pass"]))
            listing.append(wall_ms(cmd, host.env))

        pid = client.props(names.SIMULATOR_PATH, names.SIMULATOR_IFACE,
                           dest=names.SIMULATOR_BUS_NAME)["DaemonPid"]
        rss = rss_mb(pid)

        py = statistics.median(baseline)
        print(f"{'figure':44} {'result (ms)':60} goal")
        print(f"{'start to READY=1, 8 auto vGPUs recreated':44} {figures(ready)}  <= 400 ms")
        print(f"{'  baseline: python3 -c pass':44} {figures(baseline)}")
        print(f"{'  ratio to baseline':44} {statistics.median(ready) / py:.1f}x")
        print(f"{'start to READY=1, 8 vGPUs already present':44} {figures(restart)}")
        print(f"{'gvt-client list --json (8 vGPUs)':44} {figures(listing)}  <= 120 ms")
        print(f"{'  baseline: python3 -c pass':44} {figures(list_base)}")
        print(f"{'  ratio to baseline':44} "
              f"{statistics.median(listing) / statistics.median(list_base):.1f}x")
        print(f"{'daemon RSS after start':44} {rss:.1f} MB{'':50} <= 50 MB")
        return 0
    finally:
        client.close()
        host.stop()
        bus.stop()


if __name__ == "__main__":
    sys.exit(main())

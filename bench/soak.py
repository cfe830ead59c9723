"""Soak: random creates, removes, domain starts and stops and kernel events against one
gvtd for a while; its RSS and open file descriptors must stay flat, and every error it
answers must be one the operation can expect. At the end, once gvtd has caught up, the
vGPUs it shows active must be exactly the mdevs the kernel holds (none leaked, none lost).

    .venv/bin/python bench/soak.py [--duration SECONDS] [--seed N]   # default 30 min
    .venv/bin/python bench/soak.py --quick                          # 10 s

The slopes are least-squares fits, per minute, over the samples after the first tenth of the
run (the caches and the allocator's arenas fill then) and over its second half: memory that
grows in steps while bounded tables fill (dbus-fast keeps up to 1,024 validated object paths,
the interpreter's table of interned strings is rebuilt larger once) shows in the first, a
leak in both. Errors gvtd answers that the operation can meet on a healthy host (no room, a parent away, a stop that times out) are
counted, as are the emulated kernel's refusals of an event (no room for a foreign mdev,
nothing to remove); any other error from gvtd, or gvtd restarting, is unexpected.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SIM, Client, Figure, Section, settle, sim_props, text_table  # noqa: E402
from harness import CallError  # noqa: E402

from gvtd import names  # noqa: E402
from gvtd.sim.session import DBusDaemon, SimulatedHost  # noqa: E402

PARENT = "0000:00:02.0"
E = names.ERROR_PREFIX
# What each operation may meet on a healthy host, by error name.
EXPECTED = {
    "create": {E + "NoCapacity", E + "ParentMissing", E + "Busy"},
    "remove": set(),
    "start": {E + "NoCapacity", E + "ParentMissing", E + "Busy"},
    "stop": {E + "Busy"},
}
KERNEL = {"unregister", "register", "foreign", "vanish"}  # the emulated kernel's events


def usage(pid: int) -> tuple[float, int]:
    """(RSS in KiB, open file descriptors) of a process."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:"))
    return float(rss), len(list(Path(f"/proc/{pid}/fd").iterdir()))


def disagreement(client: Client) -> list[str]:
    """What gvtd shows against what the kernel holds once gvtd has caught up: every mdev in
    the kernel must be a vGPU gvtd shows active, and nothing gvtd shows active may be gone."""
    devices = Path(sim_props(client)["Root"]) / "sys/bus/mdev/devices"

    def kernel() -> set[str]:
        return {d.name for d in devices.iterdir()} if devices.is_dir() else set()

    def agree(view: dict[str, dict[str, object]]) -> bool:
        return {str(v["UUID"]) for v in view.values() if v["State"] == "active"} == kernel()

    shown = {str(v["UUID"]) for v in settle(client, agree).values() if v["State"] == "active"}
    held = kernel()
    return [f"gvtd shows {u} active, the kernel has no such mdev" for u in sorted(shown - held)] \
        + [f"the kernel has {u}, gvtd does not show it active" for u in sorted(held - shown)]


def slope_per_minute(times: list[float], values: list[float], skip: float = 0.1) -> float:
    """Least-squares slope per minute, leaving out the first `skip` of the samples."""
    start = int(len(times) * skip)
    t, v = times[start:], values[start:]
    if len(t) < 2 or t[-1] == t[0]:
        return float("nan")
    return statistics.linear_regression(t, v).slope * 60


def measure(duration: float = 1800.0, seed: int = 1) -> Section:
    sec = Section(f"Soak ({duration:g} s of random operations and kernel events)")
    rng = random.Random(seed)
    bus = DBusDaemon()
    host = SimulatedHost(bus.address, stderr=subprocess.DEVNULL)
    client = Client(bus.address)
    try:
        client.define(name="a", type="i915-GVTg_V5_8")  # auto
        client.define(name="m", type="i915-GVTg_V5_8", start="manual")
        client.define(name="d", type="i915-GVTg_V5_8", start="on-demand", domain="win10")
        uuid_a = client.vgpus()["a"]["UUID"]
        pid = sim_props(client)["DaemonPid"]
        foreign: list[str] = []

        def sim(member: str, signature: str = "", body: list[object] | None = None) -> list:
            return client.call(member, signature, body, **SIM)  # type: ignore[arg-type]

        def add_foreign() -> None:
            foreign.append(sim("AddForeignMdev", "ss", [PARENT, "i915-GVTg_V5_8"])[0])

        def remove_foreign() -> None:
            sim("RemoveMdev", "s", [foreign.pop() if foreign else uuid_a])

        ops: dict[str, Callable[[], object]] = {
            "create": lambda: client.call("CreateVGPU", "s", [rng.choice("amd")]),
            "remove": lambda: client.call("RemoveVGPU", "s", [rng.choice("amd")]),
            "start": lambda: client.call("StartDomain", "sa{sv}", ["win10", {}]),
            "stop": lambda: client.call("StopDomain", "sa{sv}", ["win10", {}]),
            "unregister": lambda: sim("UnregisterParent", "s", [PARENT]),
            "register": lambda: sim("RegisterParent", "s", [PARENT]),
            "foreign": add_foreign,
            "vanish": remove_foreign,
        }
        weights = {"create": 4, "remove": 4, "start": 2, "stop": 2, "unregister": 1,
                   "register": 1, "foreign": 1, "vanish": 1}
        done: Counter[str] = Counter()
        expected: Counter[str] = Counter()
        unexpected: list[str] = []
        times: list[float] = []
        rss: list[float] = []
        fds: list[float] = []
        started = time.monotonic()
        next_sample = started
        while (now := time.monotonic()) - started < duration:
            if now >= next_sample:
                r, f = usage(pid)
                times.append(now - started)
                rss.append(r)
                fds.append(f)
                next_sample = now + max(duration / 300, 0.2)
            op = rng.choices(list(weights), list(weights.values()))[0]
            try:
                ops[op]()
            except CallError as e:
                if op in KERNEL:  # the emulated kernel said no (no room, no such mdev)
                    expected["kernel refused"] += 1
                elif e.name in EXPECTED[op]:
                    expected[e.name.rsplit(".", 1)[-1]] += 1
                else:
                    unexpected.append(f"{op}: {e.name}: {e.text}")
            done[op] += 1
            if op == "vanish":  # let gvtd follow (and restore) before the next step
                client.call("Ping", dest=names.BUS_NAME, iface="org.freedesktop.DBus.Peer")
        sim("RegisterParent", "s", [PARENT])
        unexpected += disagreement(client)
        if sim_props(client)["DaemonPid"] != pid:
            unexpected.append("gvtd restarted during the soak")
        elapsed = time.monotonic() - started
        total = sum(done.values())
        sec.add(Figure("soak: operations per second", [total / elapsed], unit="ops/s",
                       higher=True))
        sec.add(Figure("soak: daemon RSS", rss, unit="KiB"))
        sec.add(Figure("soak: RSS slope", [slope_per_minute(times, rss)], unit="KiB/min"))
        sec.add(Figure("soak: RSS slope, second half", [slope_per_minute(times, rss, 0.5)],
                       unit="KiB/min"))
        sec.add(Figure("soak: open fds", fds, unit="fds"))
        sec.add(Figure("soak: open fd slope", [slope_per_minute(times, fds)], unit="fds/min"))
        sec.add(Figure("soak: unexpected errors", [float(len(unexpected))], unit="errors"))
        sec.notes.append(f"{total} operations in {elapsed:.0f} s: " + ", ".join(
            f"{k} {v}" for k, v in sorted(done.items())))
        tenths = [rss[min(len(rss) - 1, len(rss) * i // 10)] for i in range(11)]
        sec.notes.append("RSS (KiB) at each tenth of the run: "
                         + ", ".join(f"{r:,.0f}" for r in tenths))
        sec.notes.append("expected errors: " + (", ".join(
            f"{k} {v}" for k, v in sorted(expected.items())) or "none"))
        sec.notes += [f"UNEXPECTED {u}" for u in unexpected[:20]]
        return sec
    finally:
        client.close()
        host.stop()
        bus.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds (default 30 min)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="10 s")
    args = ap.parse_args()
    sec = measure(10.0 if args.quick else args.duration, args.seed)
    print(text_table([sec]))
    for n in sec.notes:
        print(n)
    return 1 if any(n.startswith("UNEXPECTED") for n in sec.notes) else 0


if __name__ == "__main__":
    sys.exit(main())

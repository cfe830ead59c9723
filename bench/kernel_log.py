"""Kernel log figures: a GVT-g message -> the vGPU's Health PropertiesChanged on a client,
and gvtd's CPU time over a flood of 10,000 unrelated kernel records.

    .venv/bin/python bench/kernel_log.py [--rounds N] [--flood N] [--quick]

Latency runs from just before the Simulator's KernelMessage call (the emulated kernel
prints, its /dev/kmsg wakes gvtd's reader) to the signal reaching the client; the baseline
is a GetId round trip to the bus. Each round removes and recreates the vGPU, so the message
also pays for re-reading the vGPU ids (what the first message after a change costs).

The flood's baseline is a bare reader in this process taking the same records from the
same emulated /dev/kmsg (read, parse nothing): what reading costs at all, through FUSE.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SIM, Client, Figure, Section, text_table  # noqa: E402
from events import cpu_and_wakeups  # noqa: E402
from harness import plain  # noqa: E402

from dbus_fast import Message, MessageType  # noqa: E402

from gvtd import names  # noqa: E402
from gvtd.sim.session import DBusDaemon, SimulatedHost  # noqa: E402

U = "6a0c5e1e-2f57-4b9e-8d53-9c1f0b7e2a11"


def _health(uuid: str, health: str):  # type: ignore[no-untyped-def]
    return lambda m: (m.member == "PropertiesChanged" and m.path == names.vgpu_path(uuid)
                      and plain(m.body[1]).get("Health") == health)


def bare_read(path: Path, count: int) -> float:
    """CPU seconds this process spends reading the newest `count` records."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        t = time.process_time()
        n = 0
        while True:
            try:
                os.read(fd, 8192)
                n += 1
            except BlockingIOError:
                break
        return (time.process_time() - t) * count / max(n, 1)
    finally:
        os.close(fd)


def measure(rounds: int = 30, flood: int = 10_000) -> Section:
    sec = Section("Kernel log")
    bus = DBusDaemon()
    host = SimulatedHost(bus.address)
    client = Client(bus.address)
    arrived: dict[int, float] = {}

    def stamp(m: Message) -> None:
        if m.message_type == MessageType.SIGNAL:
            arrived[id(m)] = time.monotonic()

    client.bus.add_message_handler(stamp)
    try:
        client.define(name="win10", type="i915-GVTg_V5_4", uuid=U)
        latency, baseline = [], []
        for i in range(rounds):
            t = time.monotonic()
            client.call("GetId", dest="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                        iface="org.freedesktop.DBus")
            baseline.append((time.monotonic() - t) * 1000)
            client.signals.clear()
            arrived.clear()
            t = time.monotonic()
            client.call("KernelMessage", "ssuu", [U, f"bench message {i}", 3, 0], **SIM)
            msg = client.wait_for(_health(U, "degraded"))
            latency.append((arrived[id(msg)] - t) * 1000)
            del msg
            client.call("RemoveVGPU", "s", ["win10"])
            client.call("CreateVGPU", "s", ["win10"])
        b = sec.add(Figure("GetId round trip to the bus", baseline))
        sec.add(Figure("GVT-g kernel message -> Health PropertiesChanged on a client",
                       latency, baseline=b))

        sim = plain(client.props(names.SIMULATOR_PATH, names.SIMULATOR_IFACE,
                                 dest=names.SIMULATOR_BUS_NAME))
        settings = tomllib.loads((Path(sim["ConfigDir"]) / "gvtd.toml").read_text())
        pid = sim["DaemonPid"]
        client.signals.clear()
        cpu0, runs0 = cpu_and_wakeups(pid)
        client.call("KernelFlood", "su", ["usb 1-1: reset high-speed USB device", flood], **SIM)
        client.call("KernelMessage", "ssuu", [U, "after the flood", 3, 0], **SIM)
        client.wait_for(_health(U, "degraded"))  # the flood was read before it
        cpu1, runs1 = cpu_and_wakeups(pid)
        base = sec.add(Figure(f"{flood} records read by a bare reader: CPU time",
                              [bare_read(Path(settings["kernel_log"]), flood) * 1000]))
        sec.add(Figure(f"{flood} unrelated kernel records: gvtd's CPU time",
                       [(cpu1 - cpu0) * 1000], baseline=base))
        sec.add(Figure(f"{flood} unrelated kernel records: gvtd scheduled",
                       [float(runs1 - runs0)], unit="wakeups"))
        return sec
    finally:
        client.close()
        host.stop()
        bus.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--flood", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="3 rounds, 500 records")
    args = ap.parse_args()
    sec = measure(3, 500) if args.quick else measure(args.rounds, args.flood)
    print(text_table([sec]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

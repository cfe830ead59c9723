"""Event figures of issue "react to the kernel": uevent -> PropertiesChanged latency, a parent
registering -> its 8 auto vGPUs created, and what an idle daemon costs.

    .venv/bin/python bench/events.py [--rounds N] [--idle SECONDS] [--quick]

Latency is measured from the moment the emulated kernel sent the uevent (CLOCK_MONOTONIC,
recorded by the simulator) to the moment the matching signal reached a client on the bus
(stamped as it arrives: the simulator's call that sent it returns only after the create's
later events). The daemon runs at log level debug, whose "uevent add UUID" line, read as it
is written, splits that into the emulator's part (sending, up to gvtd's receive) and gvtd's
plus the bus's.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SIM, Client, Figure, Section, goal_max, text_table  # noqa: E402
from harness import plain  # noqa: E402

from dbus_fast import Message, MessageType  # noqa: E402

from gvtd import names  # noqa: E402
from gvtd.sim.session import DBusDaemon, SimulatedHost  # noqa: E402

def uevent_time(client: Client, devpath_end: str, action: str) -> float:
    for when, act, devpath in reversed(client.call("UeventLog", **SIM)[0]):
        if act == action and devpath.endswith(devpath_end):
            return when
    raise RuntimeError(f"no {action} uevent for {devpath_end}")


class ReceiveLog:
    """When the daemon logged receiving each mdev's add uevent: its stderr, read as written."""

    LINE = re.compile(r"^gvtd: uevent add ([0-9a-f-]{36})$")

    def __init__(self, stderr: IO[bytes]) -> None:
        self.stderr = stderr
        self.received: dict[str, float] = {}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.stderr:
            m = self.LINE.match(line.decode(errors="replace").rstrip())
            if m:
                self.received[m.group(1)] = time.monotonic()

    def wait(self, uuid: str, timeout: float = 10.0) -> float:
        """The receive time; the line can trail the signal by a thread switch."""
        deadline = time.monotonic() + timeout
        while uuid not in self.received:
            if time.monotonic() > deadline:
                raise RuntimeError(f"gvtd logged no add uevent for {uuid}")
            threading.Event().wait(0.001)  # polling a reader thread, not a test wait
        return self.received[uuid]


def cpu_and_wakeups(pid: int) -> tuple[float, int]:
    """CPU seconds and times scheduled, summed over the daemon's threads."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, runs = 0.0, 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / ticks
        runs += int((task / "schedstat").read_text().split()[2])
    return cpu, runs


def measure(rounds: int = 50, idle: float = 60.0) -> Section:
    sec = Section("Events")
    args = argparse.Namespace(rounds=rounds, idle=idle)
    bus = DBusDaemon()
    # one mtty-like parent with room for 8, next to the GVT-g one
    host = SimulatedHost(bus.address, profile="multi:n=1,ports=8",
                         extra_args=["--log-level", "debug"], stderr=subprocess.PIPE)
    assert host.proc.stderr is not None
    received = ReceiveLog(host.proc.stderr)
    client = Client(bus.address)
    arrived: dict[int, float] = {}  # id(signal) -> when it reached the client

    def stamp(m: Message) -> None:
        if m.message_type == MessageType.SIGNAL:
            arrived[id(m)] = time.monotonic()

    client.bus.add_message_handler(stamp)
    try:
        # 1. uevent -> PropertiesChanged / InterfacesAdded
        latency, baseline, emulator, ours = [], [], [], []
        for _ in range(args.rounds):
            t = time.monotonic()
            client.call("GetId", dest="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                        iface="org.freedesktop.DBus")
            baseline.append((time.monotonic() - t) * 1000)
            uuid = client.call("AddForeignMdev", "ss", ["mtty0", "mtty-1"], **SIM)[0]
            msg = client.wait_for(lambda m, u=uuid: m.member == "InterfacesAdded"
                                  and m.body[0] == names.vgpu_path(u))
            sent, got = uevent_time(client, uuid, "add"), received.wait(uuid)
            latency.append((arrived[id(msg)] - sent) * 1000)
            emulator.append((got - sent) * 1000)
            ours.append((arrived[id(msg)] - got) * 1000)
            del msg
            client.call("RemoveMdev", "s", [uuid], **SIM)
            client.wait_for(lambda m, u=uuid: m.member == "InterfacesRemoved"
                            and m.body[0] == names.vgpu_path(u))
            client.signals.clear()
            arrived.clear()

        # 2. parent registers -> its 8 auto vGPUs created
        for i in range(8):
            client.define(name=f"vm{i}", type="mtty-1", parent="mtty0")
        register = []
        for _ in range(max(3, args.rounds // 10)):
            client.call("UnregisterParent", "s", ["mtty0"], **SIM)
            client.signals.clear()
            client.call("RegisterParent", "s", ["mtty0"], **SIM)
            pending = {names.vgpu_path(v["UUID"]) for v in client.vgpus().values()
                       if v["Name"].startswith("vm")}
            done: set[str] = set()

            def all_active(m, done=done, pending=pending) -> bool:  # type: ignore[no-untyped-def]
                if m.member == "PropertiesChanged" and m.path in pending \
                        and plain(m.body[1]).get("State") == "active":
                    done.add(m.path)
                return done == pending

            try:
                client.wait_for(all_active)
            except TimeoutError:
                print({v["Name"]: (v["State"], v["LastError"]) for v in client.vgpus().values()})
                raise
            register.append((time.monotonic() - uevent_time(client, "mtty0", "change")) * 1000)

        # 3. idle
        pid = client.props(names.SIMULATOR_PATH, names.SIMULATOR_IFACE,
                           dest=names.SIMULATOR_BUS_NAME)["DaemonPid"]
        threading.Event().wait(2)  # let the last passes after the registrations finish
        cpu0, runs0 = cpu_and_wakeups(pid)
        threading.Event().wait(args.idle)  # the benchmark's own idle period, not a test wait
        cpu1, runs1 = cpu_and_wakeups(pid)

        b = sec.add(Figure("GetId round trip to the bus", baseline))
        lat = sec.add(Figure("uevent -> InterfacesAdded on a client", latency, baseline=b))
        sec.add(Figure("uevent add: sent -> gvtd received it (emulator)", emulator))
        sec.add(Figure("uevent add: gvtd received -> signal on a client (gvtd, bus)", ours))
        goal_max(lat, 10)
        lat.goal = "p50 <= 10 ms, p99 <= 50 ms"
        p99 = lat.pct(99)
        lat.met = lat.median <= 10 and (p99 is None or p99 <= 50)
        sec.add(goal_max(Figure("MDEV_STATE=registered -> 8 auto vGPUs active", register), 100))
        sec.add(Figure(f"idle {args.idle:g} s: CPU time", [(cpu1 - cpu0) * 1000]))
        sec.add(Figure(f"idle {args.idle:g} s: times scheduled", [float(runs1 - runs0)],
                       unit="wakeups"))
        return sec
    finally:
        client.close()
        host.stop()
        bus.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--idle", type=float, default=60.0, help="idle period to measure (s)")
    ap.add_argument("--quick", action="store_true", help="5 rounds, 1 s idle")
    args = ap.parse_args()
    sec = measure(5, 1.0) if args.quick else measure(args.rounds, args.idle)
    print(text_table([sec]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

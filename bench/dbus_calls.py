"""D-Bus throughput: GetManagedObjects with 64 vGPUs from 4 concurrent clients, against the
bus's own org.freedesktop.DBus.GetId measured the same way in the same run (the ceiling the
bus and the clients allow on this machine).

    .venv/bin/python bench/dbus_calls.py [--quick]

Each client is its own process with its own connection, making one call at a time (the
next as soon as the reply is in), so the rate is what 4 scripts polling gvtd would get.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (Client, Figure, Section, goal_max, goal_min, settle,  # noqa: E402
                    sim_props, write_definitions)

from gvtd import names  # noqa: E402
from gvtd.sim.session import DBusDaemon, SimulatedHost  # noqa: E402

CLIENTS = 4
TARGETS = {
    "GetManagedObjects": dict(destination=names.BUS_NAME, path=names.ROOT_PATH,
                              interface=names.OBJECT_MANAGER_IFACE),
    "GetId": dict(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                  interface="org.freedesktop.DBus"),
}


async def _worker(address: str, member: str, seconds: float) -> list[float]:
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_address=address).connect()
    msg = dict(member=member, **TARGETS[member])
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"
    latencies = []
    deadline = time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        if t >= deadline:
            break
        reply = await bus.call(Message(**msg))
        latencies.append((time.perf_counter() - t) * 1000)
        if reply is None or reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{member} failed: {reply.body if reply else 'no reply'}")
    bus.disconnect()
    return latencies


def burst(address: str, member: str, seconds: float) -> tuple[float, list[float]]:
    """CLIENTS processes calling `member` for `seconds`: (calls/s in all, latencies in ms)."""
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", address, member,
                               str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(CLIENTS)]
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("a D-Bus client did not connect")
    for p in procs:  # all connected first, so that connecting is not measured
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    latencies: list[float] = []
    calls = 0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        mine = json.loads(out.splitlines()[-1])
        latencies += mine
        calls += len(mine)
    return calls / seconds, latencies


def measure(quick: bool = False) -> Section:
    sec = Section("D-Bus")
    rounds, seconds = (2, 0.5) if quick else (5, 3.0)
    bus = DBusDaemon()
    host = SimulatedHost(bus.address, profile="multi:n=4,ports=16", stderr=subprocess.DEVNULL)
    client = Client(bus.address)
    try:
        config = Path(sim_props(client)["ConfigDir"])
        write_definitions(config, [dict(name=f"vm{i:02}", uuid=str(uuidlib.uuid4()),
                                        parent=f"mtty{i // 16}", type="mtty-1", start="auto")
                                   for i in range(64)])
        client.call("Reload")
        view = settle(client, lambda v: sum(x["State"] == "active" for x in v.values()) == 64)
        active = sum(x["State"] == "active" for x in view.values())
        if active != 64:
            sec.notes.append(f"only {active} of 64 vGPUs active for the D-Bus figures")
        rates = {m: [] for m in TARGETS}  # type: dict[str, list[float]]
        lat = {m: [] for m in TARGETS}  # type: dict[str, list[float]]
        for _ in range(rounds):  # alternate, so that a change in load hits both alike
            for member in ("GetId", "GetManagedObjects"):
                rate, ls = burst(bus.address, member, seconds)
                rates[member].append(rate)
                lat[member] += ls
        b = sec.add(Figure(f"GetId, {CLIENTS} clients: rate", rates["GetId"], unit="calls/s",
                           higher=True))
        sec.add(goal_min(Figure(f"GetManagedObjects (64 vGPUs), {CLIENTS} clients: rate",
                                rates["GetManagedObjects"], unit="calls/s", baseline=b,
                                higher=True), 2000))
        b = sec.add(Figure(f"GetId, {CLIENTS} clients: latency", lat["GetId"]))
        sec.add(goal_max(Figure(f"GetManagedObjects (64 vGPUs), {CLIENTS} clients: latency",
                                lat["GetManagedObjects"], baseline=b), 10, "p99"))
        size = len(json.dumps(client.objects(), default=str))
        sec.notes.append(f"GetManagedObjects with 64 vGPUs: {len(client.objects())} objects, "
                         f"about {size // 1024} KiB as JSON")
    finally:
        client.close()
        host.stop()
        bus.stop()
    return sec


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        print(json.dumps(asyncio.run(_worker(sys.argv[2], sys.argv[3], float(sys.argv[4])))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="two short rounds")
    args = ap.parse_args()
    from common import text_table

    sec = measure(args.quick)
    print(text_table([sec]))
    print("\n".join(sec.notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a caller sends does not stay in gvtd, and a read anyone may repeat is cheap.

Calls naming thousands of domains that do not exist leave the daemon as large as before;
many concurrent and repeated Diagnose calls run the host checks once, and a change gvtd
sees (a uevent, Reload) makes the next call look again.

Every domain method takes the domain's lock, by the caller's name, before it asks libvirt
whether the domain exists. The daemon's resident memory is what the test watches: rounds
of 1,000 calls, each naming a new domain of 16 KiB, sent in waves of 100. The first rounds
warm the allocator up (it plateaus after two or three here); the next two must not make
the daemon grow by more than a quarter of what keeping their names would cost (32 MiB).
With the locks kept by name, as gvtd once did, it grew by 16 MiB a round.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType, Variant

from gvtd import names
from harness import Client, DBusDaemon, Simulation, SimulatedHost, pipelined, plain

PARENT = "0000:00:02.0"

NAME_BYTES = 16 * 1024
ROUND = 1000
WAVE = 100
WARM_ROUNDS = 3
MEASURED_ROUNDS = 2


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def unknown_domain_calls(start: int) -> list[list[Message]]:
    """ROUND calls over the domain methods, each naming a new domain of NAME_BYTES."""
    def one(i: int) -> Message:
        name = f"{i:08d}" + "d" * (NAME_BYTES - 8)
        member, signature, body = [
            ("StartDomain", "sa{sv}", [name, {}]),
            ("StopDomain", "sa{sv}", [name, {}]),
            ("AttachVGPU", "ssa{sv}", [name, "x", {}]),
            ("DetachVGPU", "ss", [name, "x"]),
            ("TuneDomain", "sa{sv}", [name, {"dry_run": Variant("b", True)}]),
        ][i % 5]
        return Message(destination=names.BUS_NAME, path=names.ROOT_PATH,
                       interface=names.MANAGER_IFACE, member=member, signature=signature,
                       body=body)

    calls = [one(i) for i in range(start, start + ROUND)]
    return [calls[i:i + WAVE] for i in range(0, ROUND, WAVE)]


def test_calls_naming_unknown_domains_leave_nothing_behind(sim: Simulation) -> None:
    pid = sim.sim_props()["DaemonPid"]
    # libvirt connects after READY=1: until then each call is LibvirtUnavailable.
    if not sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["LibvirtConnected"]:
        sim.client.wait_for(lambda m: m.member == "PropertiesChanged"
                            and plain(m.body[1]).get("LibvirtConnected") is True)

    def round_of(n: int) -> None:
        for wave in unknown_domain_calls(n * ROUND):
            for reply in pipelined(sim.bus.address, [wave])[0]:
                assert reply.message_type is MessageType.ERROR, reply.body
                assert reply.error_name == names.ERROR_PREFIX + "NotFound", reply.body

    for n in range(WARM_ROUNDS):
        round_of(n)
    warm = rss_kib(pid)
    for n in range(WARM_ROUNDS, WARM_ROUNDS + MEASURED_ROUNDS):
        round_of(n)
    grown = rss_kib(pid) - warm
    kept_would_cost = MEASURED_ROUNDS * ROUND * NAME_BYTES // 1024
    print(f"\nRSS after {WARM_ROUNDS * ROUND} warm-up calls: {warm} KiB; after "
          f"{MEASURED_ROUNDS * ROUND} more: {grown:+d} KiB (keeping their names would cost "
          f"{kept_would_cost} KiB)")
    assert grown < kept_would_cost // 4, (warm, grown)
    assert sim.client.call("Ping", iface="org.freedesktop.DBus.Peer") == []


# -- Diagnose: one run of the host checks however many call it -----------------------------
# Each run logs RAN at debug level before it reads anything, so counting RAN in the daemon's
# stderr counts runs. The answer's lifetime (DIAGNOSE_TTL, 5 s) is longer than the test's
# calls between two changes take; tests/unit/test_bounded.py checks its expiry on a clock.

RAN = "gvtd: Running the host checks for Diagnose"
CONCURRENT = 50
REPEATED = 20


@pytest.fixture
def debug_sim(dbus: DBusDaemon, tmp_path: Path) -> Iterator[tuple[SimulatedHost, Client, Path]]:
    """`gvtd --simulate` at log level debug, its stderr in a file the test reads."""
    log = tmp_path / "gvtd.log"
    with open(log, "w") as f:
        sim = Simulation(dbus, extra=["--log-level", "debug"], stderr=f.fileno())
    yield sim.host, sim.client, log
    sim.stop()


def diagnose(client: Client) -> set[str]:
    return {c[0] for c in client.call("Diagnose")[0]}


def test_concurrent_and_repeated_diagnose_run_the_checks_once(
        debug_sim: tuple[SimulatedHost, Client, Path]) -> None:
    host, client, log = debug_sim
    # Start-up ends with libvirt's connection and logind's inhibitor lock (changes gvtd
    # shows, which drop any answer computed before them; the session's logind is
    # tests/conftest.py's): count from there.
    for prop, value in (("LibvirtConnected", True), ("Suspend", "on")):
        if client.props(names.ROOT_PATH, names.MANAGER_IFACE)[prop] != value:
            client.wait_for(lambda m, p=prop, v=value: m.member == "PropertiesChanged"
                            and plain(m.body[1]).get(p) == v)
    before = log.read_text().count(RAN)
    runs = lambda: log.read_text().count(RAN) - before  # noqa: E731 (logged before the reply)
    replies = pipelined(host.env["DBUS_SESSION_BUS_ADDRESS"], [[
        Message(destination=names.BUS_NAME, path=names.ROOT_PATH,
                interface=names.MANAGER_IFACE, member="Diagnose")
        for _ in range(CONCURRENT)]])[0]
    assert {r.message_type for r in replies} == {MessageType.METHOD_RETURN}
    assert len({str(r.body) for r in replies}) == 1
    for _ in range(REPEATED):
        assert "log" in diagnose(client)
    assert runs() == 1

    def kernel_says(text: str) -> None:
        client.call("KernelMessage", "ssuu", ["", text, 3, 0], dest=names.SIMULATOR_BUS_NAME,
                    path=names.SIMULATOR_PATH, iface=names.SIMULATOR_IFACE)

    # The kernel log sends no event: within the answer's lifetime a new line is not seen...
    kernel_says("i915 0000:00:02.0: Unsupported device. GVT-g is disabled")
    assert "log.unsupported" not in diagnose(client) and runs() == 1
    # ... until gvtd sees the host change (a uevent: an mdev created by someone else) ...
    client.signals.clear()
    uuid = client.call("AddForeignMdev", "ss", [PARENT, "i915-GVTg_V5_8"],
                       dest=names.SIMULATOR_BUS_NAME, path=names.SIMULATOR_PATH,
                       iface=names.SIMULATOR_IFACE)[0]
    client.wait_for(lambda m: m.member == "InterfacesAdded"
                    and m.body[0] == names.vgpu_path(uuid))
    assert "log.unsupported" in diagnose(client) and runs() == 2
    # ... or is told to look again (Reload).
    kernel_says("i915 0000:00:02.0: GVT-g is not yet supported with GuC submission")
    assert "log.guc" not in diagnose(client) and runs() == 2
    client.call("Reload")
    assert "log.guc" in diagnose(client) and runs() == 3

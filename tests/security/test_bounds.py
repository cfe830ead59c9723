"""What a caller sends does not stay in gvtd: calls naming thousands of domains that do not
exist leave the daemon as large as before.

Every domain method takes the domain's lock, by the caller's name, before it asks libvirt
whether the domain exists. The daemon's resident memory is what the test watches: rounds
of 1,000 calls, each naming a new domain of 16 KiB, sent in waves of 100. The first rounds
warm the allocator up (it plateaus after two or three here); the next two must not make
the daemon grow by more than a quarter of what keeping their names would cost (32 MiB).
With the locks kept by name, as gvtd once did, it grew by 16 MiB a round.
"""

from __future__ import annotations

from pathlib import Path

from dbus_fast import Message, MessageType, Variant

from gvtd import names
from harness import Simulation, pipelined

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

"""StartDomain wall time: on a real libvirtd (QEMU driver, TCG) for a domain without a vGPU,
against libvirt-python's own create() of the same domain; and on the libvirt test driver
for a domain with one on-demand vGPU that gvtd creates first (emulated kernel).

    .venv/bin/python bench/libvirt_start.py [--rounds N]

The real libvirtd is a private one (tests/libvirtd.py); the domain has no disk, so each start
is QEMU's start-up, not a guest's boot. Each round stops the domain again (forced) outside
the measured time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Client, Figure, Section, text_table  # noqa: E402

import libvirt  # noqa: E402
from dbus_fast import Variant  # noqa: E402
from libvirtd import PrivateLibvirtd, domain_xml  # noqa: E402

from gvtd.sim.session import DBusDaemon, SimulatedHost  # noqa: E402

U1 = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"
TEST_NODE = (
    "<node><domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
    "<name>win10</name><memory>1048576</memory><os><type>hvm</type></os><devices>"
    "<hostdev mode='subsystem' type='mdev' managed='no' model='vfio-pci' display='off'>"
    f"<source><address uuid='{U1}'/></source></hostdev></devices>"
    "<test:runstate>5</test:runstate></domain></node>")
FORCE = {"force": Variant("b", True), "timeout": Variant("u", 0)}


def gvtd_on(bus: DBusDaemon, uri: str, workdir: Path, verbose: bool) -> tuple[SimulatedHost,
                                                                               Client]:
    """gvtd --simulate with the given libvirt URI, once it is connected to libvirt."""
    (workdir / "gvtd.toml").write_text(f'libvirt_uri = "{uri}"\n')
    host = SimulatedHost(bus.address, extra_args=["--config-dir", str(workdir),
                                                  "--state-dir", str(workdir / "state")],
                         stderr=None if verbose else subprocess.DEVNULL)
    client = Client(bus.address)
    if not client.props("/io/github/gvtd1", "io.github.gvtd1.Manager")["LibvirtConnected"]:
        client.wait_for(lambda m: m.member == "PropertiesChanged"
                        and m.body[1].get("LibvirtConnected", Variant("b", False)).value)
    return host, client


def start_ms(client: Client, name: str) -> float:
    t = time.perf_counter()
    client.call("StartDomain", "sa{sv}", [name, {}])
    return (time.perf_counter() - t) * 1000


def real(rounds: int, verbose: bool) -> list[Figure]:
    lv = PrivateLibvirtd()
    bus = DBusDaemon()
    host: SimulatedHost | None = None
    client: Client | None = None
    try:
        lv.define(domain_xml("bench"))
        lv.virsh("start", "bench")  # the first start probes QEMU: not part of any figure
        lv.virsh("destroy", "bench")
        conn = libvirt.open(lv.uri)
        dom = conn.lookupByName("bench")
        direct = []
        for _ in range(rounds):
            t = time.perf_counter()
            dom.create()
            direct.append((time.perf_counter() - t) * 1000)
            dom.destroy()
        conn.close()
        host, client = gvtd_on(bus, lv.uri, Path(tempfile.mkdtemp(prefix="gvtd-bench-")),
                               verbose)
        through = []
        for _ in range(rounds):
            through.append(start_ms(client, "bench"))
            client.call("StopDomain", "sa{sv}", ["bench", FORCE])
        base = Figure("libvirt-python create(), same domain", direct)
        return [Figure("StartDomain, real libvirtd (QEMU, TCG), no vGPU", through,
                       baseline=base), base]
    finally:
        if client is not None:
            client.close()
        if host is not None:
            host.stop()
        bus.stop()
        lv.stop()


def test_driver(rounds: int, verbose: bool) -> Figure:
    bus = DBusDaemon()
    workdir = Path(tempfile.mkdtemp(prefix="gvtd-bench-"))
    (workdir / "node.xml").write_text(TEST_NODE)
    host, client = gvtd_on(bus, f"test://{workdir / 'node.xml'}", workdir, verbose)
    try:
        client.define(name="win10", type="i915-GVTg_V5_4", uuid=U1, start="on-demand",
                      domain="win10")
        samples = []
        for _ in range(rounds):
            samples.append(start_ms(client, "win10"))
            client.call("StopDomain", "sa{sv}", ["win10", FORCE])  # removes the vGPU again
        return Figure("StartDomain, test:/// driver, 1 on-demand vGPU created", samples)
    finally:
        client.close()
        host.stop()
        bus.stop()


def measure(rounds: int = 15, verbose: bool = False) -> Section:
    sec = Section("libvirt: StartDomain")
    for fig in real(rounds, verbose):
        sec.add(fig)
    sec.add(test_driver(rounds, verbose))
    return sec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--verbose", action="store_true", help="show the daemons' logs")
    args = p.parse_args(argv)
    print(text_table([measure(args.rounds, args.verbose)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

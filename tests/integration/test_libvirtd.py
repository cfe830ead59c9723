"""gvtd against a real libvirtd with the QEMU driver (a private one, see tests/libvirtd.py).

The test driver (test_domains.py) covers gvtd's state machine; these tests cover what only a
real libvirtd does: QEMU processes that start and ignore an ACPI shutdown, lifecycle events
from changes made outside gvtd, libvirt's own refusal of an mdev QEMU cannot open, and a
libvirtd that dies and comes back while gvtd runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant

from gvtd import names
from gvtd.cputopo import Topology
from gvtd.sim.session import NotifySocket
from gvtd.state import Ownership
from gvtd.virt import domxml, tune
from gvtd.virt.connection import MAX_DELAY
from harness import (WATCHDOG, WATCHDOG_SEC, CallError, Client, DBusDaemon, Simulation,
                     keeps_answering, plain)
from libvirtd import PowerdownWatch, PrivateLibvirtd, domain_xml, wait_exit
from xserver import Xvfb

U1 = "3f1c6a2e-8d4b-4f0a-9c57-1e2d3c4b5a69"
ERR = names.ERROR_PREFIX
# Reconnection retries with a delay that doubles up to MAX_DELAY: a libvirtd that is back
# is seen within one delay, however long it was away.
RECONNECT_DEADLINE = MAX_DELAY + 30


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[PrivateLibvirtd]:
    lv = PrivateLibvirtd()
    lv.virsh("version")  # the first use probes QEMU's capabilities: seconds, once
    yield lv
    lv.stop()


@pytest.fixture
def lv(libvirtd: PrivateLibvirtd) -> Iterator[PrivateLibvirtd]:
    """The module's libvirtd, running and without domains when each test ends."""
    yield libvirtd
    if not libvirtd.pid:  # a test that stopped it failed half-way
        libvirtd.start()
    libvirtd.clear()


@pytest.fixture
def gvtd(dbus: DBusDaemon, lv: PrivateLibvirtd, tmp_path: Path) -> Iterator[Simulation]:
    yield from on_libvirtd(dbus, lv, tmp_path)


def on_libvirtd(dbus: DBusDaemon, lv: PrivateLibvirtd, config: Path) -> Iterator[Simulation]:
    """`gvtd --simulate` (emulated kernel) whose libvirt is the private libvirtd."""
    (config / "gvtd.toml").write_text(f'libvirt_uri = "{lv.uri}"\n'
                                      f'qemu_conf = "{lv.dir / "etc" / "qemu.conf"}"\n')
    sim = Simulation(dbus, config_dir=config)
    try:
        if not manager(sim)["LibvirtConnected"]:
            wait_connected(sim, True)
        yield sim
    finally:
        sim.stop()


def manager(sim: Simulation) -> dict[str, Any]:
    return sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)


def changed(msg: Message, path: str, prop: str, value: Any) -> bool:
    return (msg.member == "PropertiesChanged" and msg.path == path
            and plain(msg.body[1]).get(prop, object()) == value)


def forget(sim: Simulation) -> None:
    """Forget the signals seen so far: the next wait is for a new one."""
    sim.client.signals.clear()


def wait_connected(sim: Simulation, value: bool, timeout: float = 30.0) -> None:
    sim.client.wait_for(lambda m: changed(m, names.ROOT_PATH, "LibvirtConnected", value),
                        timeout)


def wait_state(sim: Simulation, domain: str, state: str) -> None:
    sim.client.wait_for(lambda m: changed(m, names.domain_path(domain), "State", state))


def domain_state(sim: Simulation, domain: str) -> str:
    return sim.client.props(names.domain_path(domain), names.DOMAIN_IFACE)["State"]


def start(sim: Simulation, domain: str) -> str:
    return sim.client.call("StartDomain", "sa{sv}", [domain, {}])[0]


def stop(sim: Simulation, domain: str, **options: Any) -> None:
    opts = {k: Variant("b" if isinstance(v, bool) else "u", v) for k, v in options.items()}
    sim.client.call("StopDomain", "sa{sv}", [domain, opts])


def test_start_and_stop_a_real_domain(gvtd: Simulation, lv: PrivateLibvirtd) -> None:
    lv.define(domain_xml("tiny"))
    assert start(gvtd, "tiny") == names.domain_path("tiny")
    assert lv.domstate("tiny") == "running"
    start(gvtd, "tiny")  # already running: not an error
    # No guest OS answers the ACPI request: without force that is Busy, and it keeps running.
    with pytest.raises(CallError) as e:
        stop(gvtd, "tiny", timeout=1)
    assert e.value.name == ERR + "Busy" and "--force" in e.value.text
    assert lv.domstate("tiny") == "running"
    stop(gvtd, "tiny", force=True, timeout=1)
    assert lv.domstate("tiny") == "shut off"
    assert gvtd.write_log() == []  # no vGPU was involved


def test_state_follows_libvirt_events(gvtd: Simulation, lv: PrivateLibvirtd) -> None:
    gvtd.client.define(name="w", type="i915-GVTg_V5_8", start="manual", domain="watched")
    lv.define(domain_xml("watched"))  # a definition names it: it gets a Domain object
    gvtd.client.wait_for(lambda m: m.member == "InterfacesAdded"
                         and m.body[0] == names.domain_path("watched"))
    assert domain_state(gvtd, "watched") == "shut-off"
    for command, state in [("start", "running"), ("suspend", "paused"),
                           ("resume", "running"), ("destroy", "shut-off")]:
        forget(gvtd)
        lv.virsh(command, "watched")  # outside gvtd: only libvirt's events tell it
        wait_state(gvtd, "watched", state)
    lv.virsh("undefine", "watched")
    gvtd.client.wait_for(lambda m: m.member == "InterfacesRemoved"
                         and m.body[0] == names.domain_path("watched"))


def test_mdev_qemu_cannot_open_fails_with_libvirts_reason(gvtd: Simulation,
                                                          lv: PrivateLibvirtd) -> None:
    gvtd.client.define(name="gpu", type="i915-GVTg_V5_4", uuid=U1, start="on-demand",
                       domain="gpu")
    lv.define(domain_xml("gpu", mdev=U1))
    lv.define(domain_xml("tiny"))
    # The emulated kernel creates the mdev; the real host has no such device, so libvirt
    # refuses to start QEMU with it.
    with pytest.raises(CallError) as e:
        start(gvtd, "gpu")
    assert e.value.name == ERR + "Failed"
    assert e.value.text.startswith("libvirt could not start gpu: ")
    assert "Mediated host device" in e.value.text  # libvirt's own words
    assert lv.domstate("gpu") == "shut off"
    assert domain_state(gvtd, "gpu") == "shut-off"
    # The on-demand vGPU created for the start does not outlive the failure.
    assert gvtd.client.vgpus()["gpu"]["State"] == "inactive"
    assert [w[1] for w in gvtd.write_log()] == [U1, "1"]
    # gvtd carries on.
    assert manager(gvtd)["LibvirtConnected"] is True
    start(gvtd, "tiny")
    assert lv.domstate("tiny") == "running"


def test_libvirtd_killed_and_restarted(gvtd: Simulation, lv: PrivateLibvirtd) -> None:
    gvtd.client.define(name="s", type="i915-GVTg_V5_8", start="on-demand", domain="survivor")
    gvtd.client.define(name="i", type="i915-GVTg_V5_8", start="manual", domain="idle")
    lv.define(domain_xml("survivor"))
    lv.define(domain_xml("idle"))
    start(gvtd, "survivor")
    assert gvtd.client.vgpus()["s"]["State"] == "active"
    vgpu = names.vgpu_path(gvtd.client.vgpus()["s"]["UUID"])

    forget(gvtd)
    lv.kill(signal.SIGKILL)
    wait_connected(gvtd, False)
    for call in (lambda: start(gvtd, "idle"), lambda: stop(gvtd, "survivor", force=True)):
        with pytest.raises(CallError) as e:
            call()
        assert e.value.name == ERR + "LibvirtUnavailable"
    assert manager(gvtd)["LibvirtConnected"] is False
    assert gvtd.client.vgpus()["s"]["State"] == "active"  # the vGPU side is untouched

    # While libvirtd is away its guest dies: no event will say so, only a resync can.
    guest = lv.qemu_pid("survivor")
    os.kill(guest, signal.SIGKILL)
    assert wait_exit(guest)
    forget(gvtd)
    lv.start()
    wait_connected(gvtd, True, RECONNECT_DEADLINE)
    assert domain_state(gvtd, "survivor") == "shut-off"
    assert domain_state(gvtd, "idle") == "shut-off"
    # ... and gvtd treats it as stopped: its on-demand vGPU is removed.
    gvtd.client.wait_for(lambda m: changed(m, vgpu, "State", "inactive"))
    # Methods and lifecycle events work on the new connection.
    start(gvtd, "idle")
    forget(gvtd)
    lv.virsh("destroy", "idle")
    wait_state(gvtd, "idle", "shut-off")


@pytest.mark.parametrize("display", ["spice-gl", "gtk-gl"])
def test_attach_detach_round_trip_keeps_the_qemu_namespace(gvtd: Simulation,
                                                           lv: PrivateLibvirtd,
                                                           display: str) -> None:
    """What only the qemu driver keeps: <qemu:override> and <qemu:commandline> survive
    libvirt's define, attach is idempotent against what libvirt wrote back, and detach
    takes out exactly what attach put in (the user's own qemu: elements stay)."""
    ns = "http://libvirt.org/schemas/domain/qemu/1.0"
    mine = (f"<qemu:commandline xmlns:qemu='{ns}'><qemu:arg value='-smbios'/>"
            "<qemu:arg value='type=2'/></qemu:commandline>")
    xml = domain_xml("win")
    lv.define(xml.replace("<domain type='qemu'>", f"<domain type='qemu' xmlns:qemu='{ns}'>")
              .replace("</domain>", mine + "</domain>"))
    gvtd.client.define(name="g", type="i915-GVTg_V5_4", uuid=U1, start="manual")
    opts = {"display": Variant("s", display)}
    change = gvtd.client.call("AttachVGPU", "ssa{sv}", ["win", "g", opts])[0]
    assert change
    after = lv.virsh("dumpxml", "--inactive", "win").stdout
    assert U1 in after and "type=2" in after
    if display == "spice-gl":
        assert "x-igd-opregion" in after and "qemu:override" in after  # libvirt 9 >= 8.2
        assert "rendernode='/dev/dri/renderD128'" in after
    else:
        assert "gtk,gl=on" in after and "GDK_SCALE" in after
    assert gvtd.client.call("AttachVGPU", "ssa{sv}", ["win", "g", opts])[0] == ""
    gvtd.client.call("DetachVGPU", "ss", ["win", "g"])
    back = lv.virsh("dumpxml", "--inactive", "win").stdout
    assert U1 not in back and "x-igd-opregion" not in back and "gtk,gl=on" not in back
    assert "type=2" in back


def test_tune_survives_a_define_and_reverts_byte_for_byte(gvtd: Simulation,
                                                          lv: PrivateLibvirtd) -> None:
    """What the test driver cannot show: QEMU's libvirt checks the pins, topology and
    enlightenments against its schema and validation, offers only the enlightenments its
    KVM has (domain capabilities), and writes the XML back in its own form, against which
    tune must be idempotent; revert gives it back exactly what it had."""
    lv.define(domain_xml("win").replace("<devices>", "<devices><graphics type='spice'/>"))
    caps = ET.fromstring(lv.virsh("domcapabilities", "--virttype", "qemu", "--arch", "x86_64",
                                  "--machine", "q35").stdout)
    offered = {v.text for v in caps.findall("./features/hyperv/enum[@name='features']/value")}
    before = lv.virsh("dumpxml", "--inactive", "win").stdout
    text = gvtd.client.call("TuneDomain", "sa{sv}", ["win", {}])[0]
    assert text.startswith("--- win.xml")
    after = ET.fromstring(lv.virsh("dumpxml", "--inactive", "win").stdout)
    assert [(p.get("vcpu"), p.get("cpuset")) for p in after.findall("cputune/vcpupin")] == \
        [("0", "1"), ("1", "5"), ("2", "2"), ("3", "6"), ("4", "3"), ("5", "7")]
    # a TCG domain (type qemu) has no host CPU to pass through: QEMU refuses to start
    # host-passthrough there, and tune writes the nearest, "maximum"
    assert after.find("cpu").get("mode") == "maximum"
    topology = after.find("cpu/topology")
    assert (topology.get("sockets"), topology.get("cores"), topology.get("threads")) == \
        ("1", "3", "2")
    spice = after.find("devices/graphics")
    assert spice.find("listen").get("type") == "none"
    assert spice.find("zlib").get("compression") == "never"
    assert spice.find("streaming").get("mode") == "off"
    # exactly the guide's enlightenments this libvirt offers, and a warning for the rest
    added = {e.tag for e in after.findall("features/hyperv/*")}
    assert added == set(tune.hyperv_wanted(frozenset(offered)))
    assert "spinlocks" in added and after.find("features/hyperv/spinlocks").get("retries") == \
        "8191"
    missing = [f for f in tune.HYPERV if f not in added]
    if missing:
        assert f"# warning: libvirt offers no Hyper-V {', '.join(missing)}" in text
    again = gvtd.client.call("TuneDomain", "sa{sv}", ["win", {}])[0]
    assert not [line for line in again.splitlines() if not line.startswith("# warning: ")]
    gvtd.client.call("TuneDomain", "sa{sv}", ["win", {"revert": Variant("b", True)}])
    assert lv.virsh("dumpxml", "--inactive", "win").stdout == before


BUSY = ("The XML of win changed while gvtd was editing it (a `virsh edit`?); nothing was "
        "changed; run the command again.")


def edit_by_hand(lv: PrivateLibvirtd) -> str:
    """What `virsh edit win` does: define a changed XML. Returns what libvirt then has."""
    xml = lv.virsh("dumpxml", "--inactive", "win").stdout
    lv.define(xml.replace("</name>", "</name><description>mine</description>", 1))
    return lv.virsh("dumpxml", "--inactive", "win").stdout


def busy(answer: Message) -> str:
    assert answer.message_type == MessageType.ERROR, answer.body
    assert answer.error_name == ERR + "Busy"
    return answer.body[0]


def test_tune_loses_no_virsh_edit_made_while_it_works(gvtd: Simulation,
                                                      lv: PrivateLibvirtd) -> None:
    """A `virsh edit` that lands between TuneDomain's read of the XML and its define (gvtd
    held there inside its read of the CPU topology) is kept: Busy, libvirt still has the
    edit, no copy for --revert is made; run again, the tune applies on top of the edit."""
    lv.define(domain_xml("win"))
    gvtd.sim_call("StallReads", "s", ["/thread_siblings_list"])
    reply = gvtd.client.send_call("TuneDomain", "sa{sv}", ["win", {}])
    assert gvtd.sim_call("WaitStalled")[0].endswith("/topology/thread_siblings_list")
    edited = edit_by_hand(lv)
    gvtd.sim_call("ReleaseWrites")
    assert busy(reply()) == BUSY
    assert lv.virsh("dumpxml", "--inactive", "win").stdout == edited
    assert not (gvtd.state_dir / "tune" / "win.xml").exists()
    assert gvtd.client.call("TuneDomain", "sa{sv}", ["win", {}])[0].startswith("--- win.xml")
    after = lv.virsh("dumpxml", "--inactive", "win").stdout
    assert "<description>mine</description>" in after and "vcpupin" in after
    assert (gvtd.state_dir / "tune" / "win.xml").read_text() == edited


def test_attach_loses_no_virsh_edit_made_while_it_works(gvtd: Simulation,
                                                        lv: PrivateLibvirtd) -> None:
    """AttachVGPU looks up the GPU's render node in sysfs between reading the XML and
    defining it: a `virsh edit` landing there is kept (Busy), and the attach run again
    applies on top of it."""
    lv.define(domain_xml("win"))
    gvtd.client.define(name="g", type="i915-GVTg_V5_4", uuid=U1, start="manual")
    gvtd.sim_call("StallReads", "s", ["/0000:00:02.0/drm"])
    reply = gvtd.client.send_call("AttachVGPU", "ssa{sv}", ["win", "g", {}])
    assert gvtd.sim_call("WaitStalled")[0].endswith("/0000:00:02.0/drm")
    edited = edit_by_hand(lv)
    gvtd.sim_call("ReleaseWrites")
    assert busy(reply()) == BUSY
    assert lv.virsh("dumpxml", "--inactive", "win").stdout == edited
    assert gvtd.client.call("AttachVGPU", "ssa{sv}", ["win", "g", {}])[0]
    after = lv.virsh("dumpxml", "--inactive", "win").stdout
    assert "<description>mine</description>" in after and U1 in after


def test_revert_loses_no_virsh_edit_made_while_it_works(gvtd: Simulation,
                                                        lv: PrivateLibvirtd) -> None:
    """tune --revert reads its saved copy between reading the XML and defining: with the
    copy a FIFO, gvtd opening it is the moment to `virsh edit`. Busy; the edit stays, and
    so does the saved copy."""
    lv.define(domain_xml("win"))
    gvtd.client.call("TuneDomain", "sa{sv}", ["win", {}])
    saved = gvtd.state_dir / "tune" / "win.xml"
    text = saved.read_text()
    saved.unlink()
    os.mkfifo(saved, 0o600)
    reply = gvtd.client.send_call("TuneDomain", "sa{sv}", ["win", {"revert": Variant("b", True)}])
    with open(saved, "w") as fifo:  # returns once gvtd has opened it: it is reverting
        edited = edit_by_hand(lv)
        fifo.write(text)
    assert busy(reply()) == BUSY
    assert lv.virsh("dumpxml", "--inactive", "win").stdout == edited
    assert saved.exists()


def test_every_enlightenment_survives_a_define(lv: PrivateLibvirtd) -> None:
    """Where KVM offers all of them (a real laptop), the XML tune writes is what the QEMU
    driver accepts and keeps, dependencies included (vpindex for synic, hypervclock for
    stimer), and tuning libvirt's form of it again changes nothing."""
    spec = tune.TuneSpec(Topology(((0, 4), (1, 5), (2, 6), (3, 7))),
                         hyperv=frozenset(tune.HYPERV))
    lv.define(tune.tune(domain_xml("win"), spec))
    back = lv.virsh("dumpxml", "--inactive", "win").stdout
    root = ET.fromstring(back)
    assert [e.tag for e in root.findall("features/hyperv/*")] == list(tune.HYPERV)
    assert root.find("clock/timer[@name='hypervclock']").get("present") == "yes"
    assert len(root.findall("cputune/vcpupin")) == 6
    assert tune.tune(back, spec) == domxml.serialize(domxml.parse(back))


def test_qemu_elements_declaring_their_namespace_survive_a_define(lv: PrivateLibvirtd) -> None:
    """A domain virt-manager made declares no qemu namespace on <domain>, so attach's
    <qemu:override> and <qemu:commandline> declare it themselves: the QEMU driver reads them
    by namespace, keeps them (declared on <domain> from then on) and the libosinfo metadata
    with its prefix, and attaching again to what it wrote back changes nothing."""
    osinfo = ("<metadata><libosinfo:libosinfo xmlns:libosinfo='http://libosinfo.org/xmlns/"
              "libvirt/domain/1.0'><libosinfo:os id='http://microsoft.com/win/10'/>"
              "</libosinfo:libosinfo></metadata>")
    spec = domxml.AttachSpec(U1, "gtk-gl")
    attached = domxml.attach(domain_xml("win").replace("<memory", osinfo + "<memory"), spec)
    assert attached.startswith('<domain type="qemu"><name>')  # nothing declared up there
    lv.define(attached)
    back = lv.virsh("dumpxml", "--inactive", "win").stdout
    root, q = ET.fromstring(back), domxml.Q
    assert [p.get("name") for p in
            root.iterfind(f"{q}override/{q}device/{q}frontend/{q}property")] == \
        ["x-igd-opregion", "display"]
    assert [a.get("value") for a in root.iterfind(f"{q}commandline/{q}arg")] == \
        ["-display", "gtk,gl=on"]
    assert '<libosinfo:os id="http://microsoft.com/win/10"/>' in back
    assert domxml.attach(back, spec) == domxml.serialize(domxml.parse(back))


def test_doctor_checks_the_x_display_a_gtk_gl_vm_opens(gvtd: Simulation,
                                                       lv: PrivateLibvirtd) -> None:
    """gtk-gl: QEMU (as qemu.conf's user, libvirt-qemu here) opens a window on the desktop's
    X display. The daemon names the access it needs; `gvt-client doctor` in the desktop
    session checks the X server's list, and its verdict is what QEMU's user can open."""
    x = Xvfb()
    try:
        lv.define(domain_xml("win"))
        gvtd.client.define(name="g", type="i915-GVTg_V5_4", uuid=U1, start="manual")
        gvtd.client.call("AttachVGPU", "ssa{sv}", ["win", "g", {
            "display": Variant("s", "gtk-gl"), "x_display": Variant("s", x.display)}])
        check_id = f"x-access:libvirt-qemu@{x.display}"
        checks = {c[0]: c for c in gvtd.client.call("Diagnose")[0]}
        assert checks[check_id][1] == "warn" and "win opens QEMU's own window" in \
            checks[check_id][2]
        env = {k: v for k, v in gvtd.env.items() if k not in ("DISPLAY", "XAUTHORITY")}

        def doctor(session: dict[str, str]) -> str:
            # As root, a read: the desktop session whose X server xhost asks is root's
            # (the test's Xvfb and its authority file), so its user runs doctor.
            p = subprocess.run([sys.executable, "-m", "gvtd.client.main", "--session",
                                "doctor"], env=session, capture_output=True, text=True,
                               timeout=60)
            lines = p.stdout.splitlines()
            i = next(i for i, line in enumerate(lines) if check_id in line)
            return "\n".join([lines[i], *[f for f in lines[i + 1:i + 2] if "fix:" in f]])

        desktop = dict(env, DISPLAY=x.display, XAUTHORITY=str(x.auth))
        out = doctor(desktop)
        assert out.startswith("[WARN]") and "does not let libvirt-qemu in" in out
        assert "fix: Run `xhost si:localuser:libvirt-qemu`" in out
        assert not x.reachable_as("libvirt-qemu")
        x.xhost("+si:localuser:libvirt-qemu")
        assert doctor(desktop).startswith(f"[ok  ] {check_id}: X display {x.display} lets "
                                          "libvirt-qemu in")
        assert x.reachable_as("libvirt-qemu")
        assert "Run `gvt-client doctor` in the desktop session" in doctor(env)  # elsewhere
    finally:
        x.stop()


def test_sigterm_during_a_long_stop_domain(gvtd: Simulation, lv: PrivateLibvirtd) -> None:
    """StopDomain waits (up to 120 s) for a guest that ignores the ACPI request when
    systemd stops gvtd: gvtd exits at once, and leaves the running domain its vGPU."""
    gvtd.client.define(name="s", type="i915-GVTg_V5_8", start="on-demand", domain="deaf")
    lv.define(domain_xml("deaf"))
    start(gvtd, "deaf")
    uuid = gvtd.client.vgpus()["s"]["UUID"]
    pid = gvtd.sim_props()["DaemonPid"]
    watch = PowerdownWatch(lv.uri, "deaf")
    try:
        reply = gvtd.client.send_call("StopDomain", "sa{sv}", ["deaf", {}])
        assert watch.wait()  # the request reached the guest: gvtd is waiting for it
    finally:
        watch.close()
    gvtd.client.call("AddMatch", "s", ["type='signal',sender='org.freedesktop.DBus',"
                                       f"member='NameOwnerChanged',arg0='{names.BUS_NAME}'"],
                     dest="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                     iface="org.freedesktop.DBus")
    forget(gvtd)
    os.kill(pid, signal.SIGTERM)
    assert wait_exit(pid, 10)  # not the 120 s the stop could still wait
    answer = reply()  # the caller is told why, not left with NoReply
    assert answer.error_name == ERR + "Busy" and "stopping" in answer.body[0], answer.body
    assert lv.domstate("deaf") == "running"
    mdev = gvtd.root / "sys/bus/mdev/devices" / uuid
    assert mdev.exists() and not [w for w in gvtd.write_log() if w[0].endswith("/remove")]
    # restarted (as systemd would): it finds the vGPU in use by the running domain
    gvtd.client.wait_for(lambda m: m.member == "NameOwnerChanged" and m.body[0] == names.BUS_NAME
                         and m.body[2] != "")
    assert gvtd.client.vgpus()["s"]["State"] == "active"
    added = gvtd.client.wait_for(lambda m: m.member == "InterfacesAdded"
                                 and m.body[0] == names.domain_path("deaf"))
    assert plain(added.body[1])[names.DOMAIN_IFACE]["State"] == "running"


FROZEN = 3.0  # seconds libvirtd stays hung: three times WatchdogSec, well inside libvirt's
# keepalive (5 pings 5 s apart), which would take the connection for lost


@pytest.fixture
def watched(dbus: DBusDaemon, lv: PrivateLibvirtd, tmp_path: Path) -> Iterator[Simulation]:
    """The gvtd fixture's simulation, with a watchdog (harness.WATCHDOG) whose pings reach
    the test."""
    (tmp_path / "gvtd.toml").write_text(f'libvirt_uri = "{lv.uri}"\n'
                                        f'qemu_conf = "{lv.dir / "etc" / "qemu.conf"}"\n')
    sim = Simulation(dbus, config_dir=tmp_path, env=WATCHDOG)
    try:
        if not manager(sim)["LibvirtConnected"]:
            wait_connected(sim, True)
        yield sim
    finally:
        sim.stop()


def test_a_hung_libvirtd_during_start_domain_stalls_nothing_else(watched: Simulation,
                                                                  lv: PrivateLibvirtd) -> None:
    """Two StartDomains of one domain while libvirtd hangs: gvtd keeps answering and
    pinging the watchdog; once libvirtd goes on, both succeed and the domain is started
    once (a second start would be libvirt's "domain is already running": Failed)."""
    lv.define(domain_xml("tiny"))
    with lv.frozen():
        first = watched.client.send_call("StartDomain", "sa{sv}", ["tiny", {}])
        second = watched.client.send_call("StartDomain", "sa{sv}", ["tiny", {}])
        assert keeps_answering(watched, FROZEN) >= FROZEN / WATCHDOG_SEC
    for reply in (first(), second()):
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    assert lv.domstate("tiny") == "running"
    stop(watched, "tiny", force=True, timeout=1)


def test_a_hung_libvirtd_during_diagnose_stalls_nothing_else(watched: Simulation,
                                                             lv: PrivateLibvirtd) -> None:
    with lv.frozen():
        reply = watched.client.send_call("Diagnose")
        assert keeps_answering(watched, FROZEN) >= FROZEN / WATCHDOG_SEC
    r = reply()
    assert r.message_type is MessageType.METHOD_RETURN, r.body
    libvirt = [c for c in r.body[0] if c[0] == "libvirt"]
    assert [c[1] for c in libvirt] == ["pass"] and lv.uri in libvirt[0][2]


def test_a_failed_release_after_a_domain_stops_on_its_own_is_a_problem(
        gvtd: Simulation, lv: PrivateLibvirtd) -> None:
    """The domain is destroyed outside gvtd and the kernel refuses the removal of its
    on-demand vGPU (EBUSY): the background release's failure is on the vGPU (LastError) and
    in Manager.Problems with a sentence, not lost with its task; the next stop clears it."""
    gvtd.client.define(name="s", type="i915-GVTg_V5_8", start="on-demand", domain="tiny")
    lv.define(domain_xml("tiny"))
    start(gvtd, "tiny")
    gvtd.sim_call("FailWrites", "ss", ["/remove", "EBUSY"])
    try:
        forget(gvtd)
        lv.virsh("destroy", "tiny")  # outside gvtd: only libvirt's event says so
        msg = gvtd.client.wait_for(lambda m: m.path == names.ROOT_PATH and any(
            p[0] == "vgpu:s" for p in plain(m.body[1]).get("Problems", [])))
    finally:
        gvtd.sim_call("ReleaseWrites")
    (problem,) = [p for p in plain(msg.body[1])["Problems"] if p[0] == "vgpu:s"]
    assert "Not removed after tiny stopped" in problem[2], problem
    assert "gvt-client remove s" in problem[3], problem
    vgpu = gvtd.client.vgpus()["s"]
    assert vgpu["State"] == "active"  # still there: the kernel refused
    assert "Not removed after tiny stopped" in vgpu["LastError"]
    start(gvtd, "tiny")
    stop(gvtd, "tiny", force=True, timeout=1)
    assert gvtd.client.vgpus()["s"]["State"] == "inactive"
    assert not [p for p in manager(gvtd)["Problems"] if p[0] == "vgpu:s"]


def test_sigterm_while_libvirtd_hangs(gvtd: Simulation, lv: PrivateLibvirtd,
                                      tmp_path: Path) -> None:
    """systemd stops gvtd while libvirtd hangs: the close of gvtd's libvirt connection
    (an RPC nobody answers) does not hold the stop. gvtd says STOPPING=1 and exits with 0
    while libvirtd is still frozen, sooner than libvirt's keepalive takes a hung libvirtd
    for gone (which the simulation's own gvtd, connected to it too, shows as
    LibvirtConnected false); its definition and ownership record are as they were.

    This gvtd runs as systemd runs it (its own bus, our notify socket), over the
    simulation's emulated kernel."""
    etc, state = tmp_path / "own" / "etc", tmp_path / "own" / "state"
    (etc / "vgpus.d").mkdir(parents=True)
    (etc / "gvtd.toml").write_text(f'libvirt_uri = "{lv.uri}"\n')
    definition = f'uuid = "{U1}"\ntype = "i915-GVTg_V5_8"\n'
    (etc / "vgpus.d" / "a.toml").write_text(definition)
    notify = NotifySocket(tmp_path / "own")
    bus = DBusDaemon()
    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=bus.address, NOTIFY_SOCKET=notify.path,
               UMOCKDEV_DIR=str(gvtd.root), LD_PRELOAD="libumockdev-preload.so.0")
    proc = subprocess.Popen([sys.executable, "-m", "gvtd.daemon", "--session",
                             "--config-dir", str(etc), "--state-dir", str(state)],
                            env=env, stderr=subprocess.PIPE, text=True)
    stranger = None
    try:
        notify.wait("READY=1")
        stranger = Client(bus.address)
        if not stranger.props(names.ROOT_PATH, names.MANAGER_IFACE)["LibvirtConnected"]:
            stranger.wait_for(lambda m: changed(m, names.ROOT_PATH, "LibvirtConnected", True))
        assert (gvtd.root / "sys/bus/mdev/devices" / U1).exists()
        forget(gvtd)
        with lv.frozen():
            proc.send_signal(signal.SIGTERM)
            assert notify.wait("STOPPING=1")
            assert exits_first(gvtd, proc.pid, lambda m: changed(
                m, names.ROOT_PATH, "LibvirtConnected", False))
            assert proc.wait() == 0
        assert proc.stderr is not None
        assert "libvirtd did not answer the close" in proc.stderr.read()
        assert (etc / "vgpus.d" / "a.toml").read_text() == definition
        owned = Ownership(state)
        owned.load()
        assert owned.name(U1) == "a" and owned.removable(U1)
        assert (gvtd.root / "sys/bus/mdev/devices" / U1).exists()  # left for its VM
    finally:
        if stranger is not None:
            stranger.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        bus.stop()
        notify.close()


def exits_first(sim: Simulation, pid: int, signal_seen: Any) -> bool:
    """Whether process pid exits before a signal for which signal_seen is true reaches
    sim's client: both awaited as events (a pidfd, the bus), whichever comes first."""
    loop = sim.client.loop
    fd = os.pidfd_open(pid)
    exited: asyncio.Future[None] = loop.create_future()
    seen: asyncio.Future[None] = loop.create_future()

    def on_message(msg: Message) -> None:
        if not seen.done() and signal_seen(msg):
            seen.set_result(None)

    loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
    sim.client.bus.add_message_handler(on_message)
    try:
        loop.run_until_complete(asyncio.wait({exited, seen},
                                             return_when=asyncio.FIRST_COMPLETED))
        return exited.done() and not seen.done()
    finally:
        sim.client.bus.remove_message_handler(on_message)
        loop.remove_reader(fd)
        os.close(fd)

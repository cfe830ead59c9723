"""libvirt domains with their vGPUs, on the libvirt test driver (test:///)."""

import asyncio
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType, Variant

from gvtd import names
from harness import CallError, DBusDaemon, Simulation, pipelined, plain

U1 = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"
UNKNOWN = "0b9a7b35-6f04-4e2c-9f5b-6cf33ac4c3d1"
ERR = names.ERROR_PREFIX
IGPU = "0000:00:02.0"  # the emulated Kaby Lake's iGPU, on i915
NO_DEVICE = "0000:00:02.5"  # nothing there, and no SR-IOV vGPU of gvtd's


def domain(name: str, uuid: str | None, display: str = "off", pci: tuple[str, ...] = ()) -> str:
    hostdev = (f"<hostdev mode='subsystem' type='mdev' managed='no' model='vfio-pci' "
               f"display='{display}'><source><address uuid='{uuid}'/></source></hostdev>"
               if uuid else "")
    for address in pci:  # PCI hostdevs, as gvt-client attach writes a VF's
        d, b, rest = address.split(":")
        hostdev += (f"<hostdev mode='subsystem' type='pci' managed='no'><source><address "
                    f"domain='0x{d}' bus='0x{b}' slot='0x{rest[:2]}' function='0x{rest[3]}'/>"
                    "</source></hostdev>")
    return (f"<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
            f"<name>{name}</name><memory>1048576</memory><os><type>hvm</type></os>"
            f"<devices>{hostdev}</devices><test:runstate>5</test:runstate></domain>")


@pytest.fixture
def virt(dbus: DBusDaemon, tmp_path: Path):  # type: ignore[no-untyped-def]
    node = tmp_path / "node.xml"
    node.write_text("<node>" + domain("win10", U1) + domain("stranger", UNKNOWN)
                    + domain("plain", None) + domain("twin", UNKNOWN)
                    + domain("lint", "5a1e7f7c-1c37-4d7a-9d43-2b8c8c1f4e11", display="on")
                    + domain("passthru", "3c1f0e9a-8b7d-4e6f-a5c4-2d1e0f9a8b7c",
                             pci=(IGPU, NO_DEVICE))
                    + "</node>")
    (tmp_path / "gvtd.toml").write_text(f'libvirt_uri = "test://{node}"\n')
    sim = Simulation(dbus, config_dir=tmp_path)
    if not sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["LibvirtConnected"]:
        sim.client.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == names.ROOT_PATH
                            and plain(m.body[1]).get("LibvirtConnected") is True)
    yield sim
    sim.stop()


def state(sim: Simulation, name: str) -> str:
    return sim.client.props(names.domain_path(name), names.DOMAIN_IFACE)["State"]


def writes(sim: Simulation, suffix: str) -> list[str]:
    return [w[1] for w in sim.write_log() if w[0].endswith(suffix)]


def test_start_creates_on_demand_vgpu_and_stop_removes_it(virt: Simulation) -> None:
    virt.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U1, start="on-demand",
                       domain="win10")
    assert virt.client.vgpus()["win10"]["State"] == "inactive"
    assert state(virt, "win10") == "shut-off"
    path = virt.client.call("StartDomain", "sa{sv}", ["win10", {}])[0]
    assert path == names.domain_path("win10")
    assert virt.client.vgpus()["win10"]["State"] == "active"
    assert state(virt, "win10") == "running"
    d = virt.client.props(path, names.DOMAIN_IFACE)
    assert d["VGPUs"] == [names.vgpu_path(U1)]
    virt.client.call("StopDomain", "sa{sv}", ["win10", {}])
    assert state(virt, "win10") == "shut-off"
    assert virt.client.vgpus()["win10"]["State"] == "inactive"
    assert writes(virt, "/create") == [U1] and writes(virt, "/remove") == ["1"]


def test_starting_a_running_domain_is_not_an_error(virt: Simulation) -> None:
    virt.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U1, domain="win10")
    virt.client.call("StartDomain", "sa{sv}", ["win10", {}])
    virt.client.call("StartDomain", "sa{sv}", ["win10", {}])
    assert state(virt, "win10") == "running"
    assert writes(virt, "/create") == [U1]


def test_concurrent_starts_start_once_and_create_once(virt: Simulation) -> None:
    virt.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U1, start="on-demand",
                       domain="win10")
    bus = virt.client.bus

    async def burst() -> list[Message]:
        calls = [bus.call(Message(destination=names.BUS_NAME, path=names.ROOT_PATH,
                                  interface=names.MANAGER_IFACE, member="StartDomain",
                                  signature="sa{sv}", body=["win10", {}]))
                 for _ in range(10)]
        return await asyncio.gather(*calls)  # type: ignore[return-value]

    replies = virt.client.loop.run_until_complete(burst())
    assert [r.message_type for r in replies] == [MessageType.METHOD_RETURN] * 10
    assert writes(virt, "/create") == [U1]
    assert state(virt, "win10") == "running"


def test_100_creates_and_starts_from_10_clients(virt: Simulation) -> None:
    """10 clients, each with 5 CreateVGPU and 5 StartDomain of the same vGPU and domain in
    flight at once: one create, one start, and every caller answered with success."""
    virt.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U1, start="on-demand",
                       domain="win10")

    def call(member: str) -> Message:
        signature, body = ("s", ["win10"]) if member == "CreateVGPU" else ("sa{sv}", ["win10", {}])
        return Message(destination=names.BUS_NAME, path=names.ROOT_PATH,
                       interface=names.MANAGER_IFACE, member=member, signature=signature,
                       body=body)

    batches = [[call(("CreateVGPU", "StartDomain")[(i + c) % 2]) for i in range(10)]
               for c in range(10)]
    replies = [r for batch in pipelined(virt.bus.address, batches) for r in batch]
    assert len(replies) == 100
    assert [(r.error_name, r.body) for r in replies if r.error_name] == []
    assert writes(virt, "/create") == [U1]
    assert state(virt, "win10") == "running"
    started = [m for m in virt.client.signals if m.member == "PropertiesChanged"
               and m.path == names.domain_path("win10")
               and plain(m.body[1]).get("State") == "running"]
    assert len(started) == 1


def test_unknown_uuid_in_domain_xml_names_the_fix(virt: Simulation) -> None:
    with pytest.raises(CallError) as e:
        virt.client.call("StartDomain", "sa{sv}", ["stranger", {}])
    assert e.value.name == ERR + "NotFound"
    assert UNKNOWN in e.value.text and f"--uuid {UNKNOWN}" in e.value.text
    assert state(virt, "stranger") == "shut-off"
    assert virt.write_log() == []


def test_domain_without_vgpu_starts_and_unknown_domain(virt: Simulation) -> None:
    virt.client.call("StartDomain", "sa{sv}", ["plain", {}])  # no Domain object: no vGPU
    with pytest.raises(CallError) as e:
        virt.client.call("StartDomain", "sa{sv}", ["nope", {}])
    assert e.value.name == ERR + "NotFound" and "virsh list --all" in e.value.text


def test_bad_stop_options(virt: Simulation) -> None:
    with pytest.raises(CallError) as e:
        virt.client.call("StopDomain", "sa{sv}", ["win10", {"force": Variant("s", "yes")}])
    assert e.value.name == ERR + "InvalidArgument"


def test_removed_under_a_running_domain_is_failed_not_recreated(virt: Simulation) -> None:
    virt.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U1, domain="win10")
    virt.client.call("StartDomain", "sa{sv}", ["win10", {}])
    virt.sim_call("RemoveMdev", "s", [U1])
    virt.client.wait_for(lambda m: m.member == "PropertiesChanged"
                         and m.path == names.vgpu_path(U1)
                         and plain(m.body[1]).get("State") == "failed")
    v = virt.client.vgpus()["win10"]
    assert "while the running domain win10 uses it" in v["LastError"]
    assert writes(virt, "/create") == [U1]


def test_cli_start_and_stop(virt: Simulation) -> None:
    virt.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U1, start="on-demand",
                       domain="win10")
    p = virt.gvt_client("start", "win10", check=True)
    assert "win10 is running" in p.stdout
    status = virt.gvt_client("status", check=True).stdout
    assert "domain win10: running (uses win10)" in status and "libvirt connected" in status
    p = virt.gvt_client("stop", "win10", "--timeout", "30", check=True)
    assert "shut down" in p.stdout and "is off" in p.stdout
    assert "  win10: shut-off" in p.stdout  # progress from the Domain's State signal
    p = virt.gvt_client("start", "stranger")
    assert p.returncode == 1 and UNKNOWN in p.stderr


def test_libvirt_unreachable(dbus: DBusDaemon, tmp_path: Path) -> None:
    (tmp_path / "gvtd.toml").write_text('libvirt_uri = "test:///nonexistent/node.xml"\n')
    sim = Simulation(dbus, config_dir=tmp_path)
    try:
        assert sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["LibvirtConnected"] is False
        with pytest.raises(CallError) as e:
            sim.client.call("StartDomain", "sa{sv}", ["win10", {}])
        assert e.value.name == ERR + "LibvirtUnavailable"
        # the vGPU side keeps working
        sim.client.define(name="a", type="i915-GVTg_V5_8")
        assert sim.client.vgpus()["a"]["State"] == "active"
    finally:
        sim.stop()


def test_attach_dry_run_then_attach_and_detach(virt: Simulation) -> None:
    virt.client.define(name="plain-gpu", type="i915-GVTg_V5_8", start="manual")
    opts = {"display": Variant("s", "vnc"), "dry_run": Variant("b", True)}
    change = virt.client.call("AttachVGPU", "ssa{sv}", ["plain", "plain-gpu", opts])[0]
    uuid = virt.client.vgpus()["plain-gpu"]["UUID"]
    assert change.startswith("--- plain.xml") and f'<address uuid="{uuid}"' in change
    with pytest.raises(CallError):  # nothing was defined: still no vGPU in plain's XML
        virt.client.props(names.domain_path("plain"), names.DOMAIN_IFACE)
    opts["dry_run"] = Variant("b", False)
    virt.client.call("AttachVGPU", "ssa{sv}", ["plain", "plain-gpu", opts])
    virt.client.wait_for(lambda m: m.member == "InterfacesAdded"
                         and m.body[0] == names.domain_path("plain"))
    assert virt.client.props(names.domain_path("plain"), names.DOMAIN_IFACE)["VGPUs"] == \
        [names.vgpu_path(uuid)]
    assert virt.client.call("AttachVGPU", "ssa{sv}", ["plain", "plain-gpu", opts])[0] == ""
    p = virt.gvt_client("attach", "plain", "plain-gpu", "--display", "vnc")
    assert "already has plain-gpu attached" in p.stdout
    virt.gvt_client("detach", "plain", "plain-gpu", check=True)
    virt.client.wait_for(lambda m: m.member == "InterfacesRemoved"
                         and m.body[0] == names.domain_path("plain"))


def test_attach_spice_gl_uses_the_render_node_path(virt: Simulation) -> None:
    virt.client.define(name="g", type="i915-GVTg_V5_8", start="manual")
    p = virt.gvt_client("attach", "plain", "g", "--dry-run", check=True)
    assert "rendernode=\"/dev/dri/renderD128\"" in p.stdout
    assert "x-igd-opregion" in p.stdout


def test_a_rom_is_a_vfs_alone(virt: Simulation) -> None:
    """An mdev has no ROM BAR: --rom and --no-rom-bar are refused by name, nothing written;
    the two together are a usage error."""
    virt.client.define(name="g", type="i915-GVTg_V5_8", start="manual")
    for flag in (["--rom", "/usr/share/common-licenses/GPL-3"], ["--no-rom-bar"]):
        p = virt.gvt_client("attach", "plain", "g", "--display", "vnc", *flag)
        assert p.returncode == 1 and "rom and rom_bar are for an SR-IOV VF" in p.stderr, flag
    change = virt.client.call("AttachVGPU", "ssa{sv}", ["plain", "g", {
        "display": Variant("s", "vnc"), "dry_run": Variant("b", True)}])[0].splitlines()
    for sign, has in (("-", False), ("+", True)):  # the hostdev is still to be added
        assert any('type="mdev"' in x for x in change[2:] if x[:1] == sign) == has
    p = virt.gvt_client("attach", "plain", "g", "--rom", "/x.rom", "--no-rom-bar")
    assert p.returncode == 2 and "not allowed with" in p.stderr


def test_attach_a_second_vgpu_is_busy(virt: Simulation) -> None:
    virt.client.define(name="other", type="i915-GVTg_V5_8", start="manual")
    with pytest.raises(CallError) as e:
        virt.client.call("AttachVGPU", "ssa{sv}", ["win10", "other", {}])
    assert e.value.name == ERR + "Busy"


def test_lint_reaches_problems(virt: Simulation) -> None:
    ids = [p[0] for p in virt.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["Problems"]]
    assert "domain:lint:display-no-graphics" in ids
    assert f"vgpu:{UNKNOWN}:shared" in ids  # stranger and twin name the same vGPU
    assert not [i for i in ids if i.startswith("domain:win10:")]


def test_doctor_lints_pci_hostdevs_over_sysfs(virt: Simulation) -> None:
    """A PCI hostdev that is not a VF of gvtd's: the host's own iGPU (i915 drives it, as
    the emulated sysfs shows) and an address where nothing is."""
    checks = {c[0]: c for c in virt.client.call("Diagnose")[0]
              if c[0].startswith("domain:passthru:")}
    igpu, absent = (checks.pop(f"domain:passthru:pci-not-a-vf:{a}") for a in (IGPU, NO_DEVICE))
    assert checks == {}
    assert igpu[1] == absent[1] == "warn"
    assert "not a VF of any SR-IOV GPU gvtd knows" in igpu[2] and "i915 drives it" in igpu[2]
    assert "does not exist" in absent[2] and "gvt-client attach" in absent[3]


def test_doctor_reports_libvirt(virt: Simulation, dbus: DBusDaemon, tmp_path: Path) -> None:
    checks = {c[0]: c for c in virt.client.call("Diagnose")[0]}
    assert checks["libvirt"][1] == "pass" and "reachable" in checks["libvirt"][2]
    assert checks["opregion"][1] == "pass" and "qemu:override" in checks["opregion"][2]
    virt.stop()
    other = tmp_path / "down"
    other.mkdir()
    (other / "gvtd.toml").write_text('libvirt_uri = "test:///nonexistent/node.xml"\n')
    sim = Simulation(dbus, config_dir=other)
    try:
        checks = {c[0]: c for c in sim.client.call("Diagnose")[0]}
        assert checks["libvirt"][1] == "fail" and "systemctl start libvirtd" in checks["libvirt"][3]
        assert "opregion" not in checks
    finally:
        sim.stop()

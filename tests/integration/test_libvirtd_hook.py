"""The libvirt hook as libvirt runs it: a private libvirtd (tests/libvirtd.py) with the
packaged hook in its hooks/qemu.d/, and `gvtd --simulate` on the bus it sees as the system
bus. `virsh start` goes to libvirtd alone; gvtd hears of it only through the hook.

libvirtd looks for hooks under its sysconfdir (/etc/libvirt/hooks) when it starts and runs
them with a cleared environment, so the hook must be in the libvirtd's own /etc/libvirt and
the bus at /run/dbus/system_bus_socket: both are mounts in the libvirtd's private mount
namespace, over a temporary directory; the host's /etc and /run are untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import Message

from gvtd import names
from harness import ROOT, DBusDaemon, Simulation, plain
from libvirtd import PrivateLibvirtd, domain_xml

HOOK = ROOT / "packaging" / "libvirt-hook" / "gvtd"
U1 = "5d2e8f1a-3b4c-4d5e-8f6a-7b8c9d0e1f2a"


@pytest.fixture(scope="module")
def bus() -> Iterator[DBusDaemon]:
    """One bus for the module: the libvirtd's system bus is fixed when it starts."""
    b = DBusDaemon()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def libvirtd(bus: DBusDaemon) -> Iterator[PrivateLibvirtd]:
    path = dict(kv.split("=", 1) for kv in bus.address.removeprefix("unix:").split(","))["path"]
    lv = PrivateLibvirtd(hooks=(HOOK,), system_bus=path)
    lv.virsh("version")  # the first use probes QEMU's capabilities: seconds, once
    yield lv
    lv.stop()


@pytest.fixture
def gvtd(bus: DBusDaemon, libvirtd: PrivateLibvirtd, tmp_path: Path) -> Iterator[Simulation]:
    """gvtd on that bus, with the same libvirtd as its libvirt (as on a host): a hook that
    called back into libvirt while it starts the domain would wait out its timeout."""
    (tmp_path / "gvtd.toml").write_text(f'libvirt_uri = "{libvirtd.uri}"\n')
    sim = Simulation(bus, config_dir=tmp_path)
    yield sim
    sim.stop()
    libvirtd.clear()


def wait_vgpu_state(sim: Simulation, uuid: str, state: str) -> None:
    path = names.vgpu_path(uuid)
    if sim.client.props(path, names.VGPU_IFACE)["State"] != state:
        sim.client.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == path
                            and plain(m.body[1]).get("State") == state)


def wait_domain_uses(sim: Simulation, name: str, uuid: str) -> None:
    """Until gvtd has read the domain's XML from libvirt (its Domain object lists the
    vGPU): gvtd acts on what libvirt says a domain uses, not on what the hook claims."""
    path, vgpu = names.domain_path(name), names.vgpu_path(uuid)

    def shown(m: Message) -> bool:
        if m.member == "InterfacesAdded" and m.body[0] == path:
            return vgpu in plain(m.body[1]).get(names.DOMAIN_IFACE, {}).get("VGPUs", [])
        return m.member == "PropertiesChanged" and m.path == path and \
            vgpu in plain(m.body[1]).get("VGPUs", [])

    objects = sim.client.objects()
    if vgpu not in objects.get(path, {}).get(names.DOMAIN_IFACE, {}).get("VGPUs", []):
        sim.client.wait_for(shown)


def test_virsh_start_gets_the_vgpu_and_destroy_removes_it(gvtd: Simulation,
                                                          libvirtd: PrivateLibvirtd) -> None:
    gvtd.client.define(name="w", type="i915-GVTg_V5_4", uuid=U1, start="on-demand",
                       domain="hooked")
    libvirtd.define(domain_xml("hooked"))
    libvirtd.virsh("start", "hooked")
    # prepare begin ran and returned before libvirtd went on: the vGPU is there already
    assert gvtd.client.vgpus()["w"]["State"] == "active"
    assert [w[1] for w in gvtd.write_log()] == [U1]
    assert libvirtd.domstate("hooked") == "running"
    libvirtd.virsh("destroy", "hooked")
    wait_vgpu_state(gvtd, U1, "inactive")  # release end: the on-demand vGPU goes
    assert [w[1] for w in gvtd.write_log()] == [U1, "1"]


def test_mdev_hostdev_is_created_before_libvirt_looks_for_it(gvtd: Simulation,
                                                             libvirtd: PrivateLibvirtd) -> None:
    gvtd.client.define(name="g", type="i915-GVTg_V5_4", uuid=U1, start="on-demand")
    libvirtd.define(domain_xml("gpu", mdev=U1))
    wait_domain_uses(gvtd, "gpu", U1)  # only a definition naming it is not waited for
    p = libvirtd.virsh("start", "gpu", check=False)
    # The hook created the mdev in the emulated kernel; the host's own /sys, where libvirt
    # then looks for it, has no such device, so libvirt refuses with its own words...
    assert p.returncode == 1 and "Mediated host device" in p.stderr, p.stderr
    # ...after the create, and its release hook removed the on-demand vGPU again.
    wait_vgpu_state(gvtd, U1, "inactive")
    assert [w[1] for w in gvtd.write_log()] == [U1, "1"]
    assert libvirtd.domstate("gpu") == "shut off"


def test_gvtd_refusal_stops_the_start_with_its_message(gvtd: Simulation,
                                                       libvirtd: PrivateLibvirtd) -> None:
    libvirtd.define(domain_xml("stranger", mdev=U1))
    p = libvirtd.virsh("start", "stranger", check=False)
    assert p.returncode == 1 and "gvtd: " in p.stderr and U1 in p.stderr \
        and "gvt-client define" in p.stderr, p.stderr
    assert libvirtd.domstate("stranger") == "shut off" and gvtd.write_log() == []

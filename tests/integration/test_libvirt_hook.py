"""The libvirt hook, run as libvirt runs it (argv, domain XML on stdin) against
`gvtd --simulate`: prepare begin creates the domain's vGPUs, release end removes the
on-demand ones, a refusal fails the start with gvtd's message."""

import os
import subprocess
import sys
import time
from pathlib import Path

from harness import DBusDaemon, Simulation

HOOK = Path(__file__).resolve().parents[2] / "packaging/libvirt-hook/gvtd"
UUID = "0e2b6a8c-5d40-4a57-9b47-3c1a3f0d8e21"
XML = """<domain type='kvm'><name>win10</name><devices>
<hostdev mode='subsystem' type='mdev' managed='no' model='vfio-pci' display='on'>
<source><address uuid='{uuid}'/></source></hostdev></devices></domain>"""


VF_XML = """<domain type='kvm'><name>win11</name><devices>
<hostdev mode='subsystem' type='pci' managed='{}'><source><address domain='0x0000' bus='0x00'
slot='0x02' function='0x1'/></source></hostdev></devices></domain>"""


def hook(address: str, *args: str, xml: str = "") -> subprocess.CompletedProcess[str]:
    """The hook as root, as libvirtd runs it: its methods are root's, not a user's."""
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address)
    return subprocess.run([sys.executable, str(HOOK), *args], input=xml, env=env,
                          capture_output=True, text=True, timeout=30)


def test_prepare_creates_and_release_removes_on_demand(sim: Simulation) -> None:
    sim.gvt_client("define", "w", "--type", "i915-GVTg_V5_4", "--uuid", UUID, "--start",
                   "on-demand", "--domain", "win10", check=True)
    assert sim.client.vgpus()["w"]["State"] == "inactive"
    p = hook(sim.bus.address, "win10", "prepare", "begin", "-", xml=XML.format(uuid=UUID))
    assert (p.returncode, p.stderr) == (0, "")
    assert sim.client.vgpus()["w"]["State"] == "active"
    p = hook(sim.bus.address, "win10", "release", "end", "-", xml=XML.format(uuid=UUID))
    assert (p.returncode, p.stderr) == (0, "")
    assert sim.client.vgpus()["w"]["State"] == "inactive"


def test_definition_naming_the_domain_is_enough(sim: Simulation) -> None:
    sim.gvt_client("define", "w", "--type", "i915-GVTg_V5_8", "--start", "on-demand",
                   "--domain", "win10", check=True)
    p = hook(sim.bus.address, "win10", "prepare", "begin", "-", xml="<domain/>")
    assert p.returncode == 0 and sim.client.vgpus()["w"]["State"] == "active"


def test_unknown_vgpu_fails_the_start_with_the_fix(sim: Simulation) -> None:
    p = hook(sim.bus.address, "win10", "prepare", "begin", "-", xml=XML.format(uuid=UUID))
    assert p.returncode == 1
    assert p.stderr.startswith("gvtd: ") and UUID in p.stderr and "gvt-client define" in p.stderr
    assert UUID not in {v["UUID"] for v in sim.client.vgpus().values()}


def test_other_operations_and_absent_gvtd_never_block_libvirt(dbus: DBusDaemon) -> None:
    started = time.monotonic()
    for args in (("win10", "start", "begin", "-"), ("win10", "stopped", "end", "-"),
                 ("win10", "release", "end", "-")):
        p = hook(dbus.address, *args, xml=XML.format(uuid=UUID))
        assert (p.returncode, p.stderr) == (0, ""), args
    p = hook(dbus.address, "win10", "prepare", "begin", "-", xml=XML.format(uuid=UUID))
    assert p.returncode == 0 and "gvtd is not running" in p.stderr
    p = hook(dbus.address, "plain", "prepare", "begin", "-", xml="<domain/>")
    assert (p.returncode, p.stderr) == (0, "")
    # an SR-IOV VF, as gvt-client attach writes it: gvtd binds it, so its absence is said;
    # a device libvirt binds itself (managed='yes', its default) is none of gvtd's
    for managed, said in (("no", True), ("yes", False)):
        p = hook(dbus.address, "win11", "prepare", "begin", "-", xml=VF_XML.format(managed))
        assert p.returncode == 0 and ("gvtd is not running" in p.stderr) == said, managed
    assert time.monotonic() - started < 20  # answered at once, no timeout waited out


# What a forged or mistaken hook call may not do, even as root: gvtd acts on what libvirt
# (its event cache) and the definitions say the domain uses, not on the caller's UUIDs.
FOREIGN = "7c3e9d2a-41b6-4f0e-8a5d-2e6f1b9c0d34"


def test_release_of_a_running_domain_removes_nothing(sim: Simulation) -> None:
    """libvirt still has win10 running: its vGPU stays, whatever the caller claims."""
    sim.gvt_client("define", "w", "--type", "i915-GVTg_V5_4", "--uuid", UUID, "--start",
                   "on-demand", "--domain", "win10", check=True)
    sim.client.call("StartDomain", "sa{sv}", ["win10", {}])
    before = sim.write_log()
    p = hook(sim.bus.address, "win10", "release", "end", "-", xml=XML.format(uuid=UUID))
    assert (p.returncode, p.stderr) == (0, "")
    assert sim.write_log() == before
    assert sim.client.vgpus()["w"]["State"] == "active"


def test_release_ignores_a_vgpu_the_domain_does_not_use(sim: Simulation) -> None:
    sim.gvt_client("define", "other", "--type", "i915-GVTg_V5_8", "--uuid", FOREIGN,
                   "--start", "on-demand", "--domain", "elsewhere", check=True)
    sim.gvt_client("create", "other", check=True)
    before = sim.write_log()
    p = hook(sim.bus.address, "win10", "release", "end", "-", xml=XML.format(uuid=FOREIGN))
    assert (p.returncode, p.stderr) == (0, "")
    assert sim.write_log() == before
    assert sim.client.vgpus()["other"]["State"] == "active"


def test_prepare_creates_nothing_for_another_domains_vgpu(sim: Simulation) -> None:
    sim.gvt_client("define", "other", "--type", "i915-GVTg_V5_8", "--uuid", FOREIGN,
                   "--start", "on-demand", "--domain", "elsewhere", check=True)
    p = hook(sim.bus.address, "win10", "prepare", "begin", "-", xml=XML.format(uuid=FOREIGN))
    assert p.returncode == 0, p.stderr
    assert sim.write_log() == []
    assert sim.client.vgpus()["other"]["State"] == "inactive"

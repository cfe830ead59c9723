"""The guide's VM tuning as XML edits: CPU topology and pins, Hyper-V, SPICE, and checks."""

import xml.etree.ElementTree as ET

import pytest

from gvtd.cputopo import Topology
from gvtd.errors import InvalidArgument
from gvtd.virt import domxml, tune
from gvtd.virt.tune import TuneSpec

KABY_LAKE = Topology(((0, 4), (1, 5), (2, 6), (3, 7)))  # 4 cores, 8 threads
NO_SMT = Topology(((0,), (1,), (2,), (3,)))
ALL_HYPERV = frozenset(tune.HYPERV)
WIN10 = """<domain type='kvm'>
  <name>win10</name>
  <memory unit='KiB'>4194304</memory>
  <vcpu placement='static' current='2'>4</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <features><acpi/><hyperv mode='custom'><relaxed state='on'/></hyperv></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>Skylake-Client</model></cpu>
  <clock offset='localtime'/>
  <devices>
    <graphics type='spice' autoport='yes'><listen type='address'/><gl enable='no'/></graphics>
    <video><model type='qxl'/></video>
  </devices>
</domain>
"""


def tuned(xml: str = WIN10, **kw: object) -> ET.Element:
    spec = TuneSpec(**{"topology": KABY_LAKE, "hyperv": ALL_HYPERV, **kw})  # type: ignore
    return ET.fromstring(tune.tune(xml, spec))


def pins(root: ET.Element) -> list[tuple[str, str]]:
    return [(p.get("vcpu"), p.get("cpuset")) for p in root.findall("./cputune/vcpupin")]


def test_smt_host_pins_guest_cores_on_sibling_pairs() -> None:
    root = tuned()
    assert root.find("vcpu").text == "6" and root.find("vcpu").attrib == {"placement": "static"}
    # guest core 0 = vCPUs 0 and 1 on host core 1's siblings 1 and 5, and so on; never core 0
    assert pins(root) == [("0", "1"), ("1", "5"), ("2", "2"), ("3", "6"), ("4", "3"),
                          ("5", "7")]
    cpu = root.find("cpu")
    assert cpu.attrib == {"mode": "host-passthrough", "check": "none"}
    assert cpu.find("model") is None
    assert cpu.find("topology").attrib == {"sockets": "1", "cores": "3", "threads": "2"}
    # libvirt's element order: vcpu, cputune, os, features, cpu
    tags = [c.tag for c in root]
    assert tags.index("vcpu") < tags.index("cputune") < tags.index("os") < tags.index("cpu")


def test_vcpus_and_first_core() -> None:
    assert pins(tuned(vcpus=4)) == [("0", "1"), ("1", "5"), ("2", "2"), ("3", "6")]
    root = tuned(vcpus=8, first_core=True)
    assert pins(root)[:2] == [("0", "0"), ("1", "4")]
    assert root.find("cpu/topology").get("cores") == "4"


def test_no_smt_host_uses_one_thread_per_core() -> None:
    root = tuned(topology=NO_SMT)
    assert root.find("cpu/topology").attrib == {"sockets": "1", "cores": "3", "threads": "1"}
    assert pins(root) == [("0", "1"), ("1", "2"), ("2", "3")]


def test_no_pinning_removes_old_pins() -> None:
    root = tuned(tune.tune(WIN10, TuneSpec(KABY_LAKE)), vcpus=2, pinning=False)
    assert root.find("cputune") is None
    assert root.find("cpu/topology").attrib == {"sockets": "1", "cores": "1", "threads": "2"}


@pytest.mark.parametrize("kw, words", [
    ({"vcpus": 5}, "must be even"),
    ({"vcpus": 8}, "--vcpus 6"),  # CPU 0's core is the host's
    ({"vcpus": 0}, "out of range"),
    ({"vcpus": 10, "pinning": False}, "out of range"),
    ({"topology": Topology(((0, 1),))}, "--use-cpu0"),
])
def test_impossible_cpu_requests_are_named_errors(kw: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        tuned(**kw)


def test_hyperv_enlightenments() -> None:
    hv = tuned().find("features/hyperv")
    assert hv.get("mode") == "custom"
    assert [(e.tag, e.get("state")) for e in hv] == [(f, "on") for f in tune.HYPERV]
    assert hv.find("spinlocks").get("retries") == "8191"
    root = tuned()
    assert root.find("clock").get("offset") == "localtime"  # kept
    assert root.find("clock/timer[@name='hypervclock']").get("present") == "yes"
    assert root.find("features/acpi") is not None


def test_only_what_libvirt_accepts_and_nothing_without_its_dependency() -> None:
    hv = tuned(hyperv=frozenset({"relaxed", "vapic", "spinlocks", "synic", "stimer"})) \
        .find("features/hyperv")
    assert [e.tag for e in hv] == ["relaxed", "vapic", "spinlocks"]  # synic needs vpindex
    assert tuned(hyperv=frozenset()).find("features/hyperv/vapic") is None
    assert tuned(hyperv=None).find("features/hyperv/vapic") is None


def test_spice_for_a_local_viewer() -> None:
    graphics = tuned().find("devices/graphics")
    assert graphics.attrib == {"type": "spice"}
    assert [(e.tag, dict(e.attrib)) for e in graphics] == [
        ("listen", {"type": "none"}), ("image", {"compression": "off"}),
        ("jpeg", {"compression": "never"}), ("zlib", {"compression": "never"}),
        ("playback", {"compression": "off"}), ("streaming", {"mode": "off"}),
        ("gl", {"enable": "no"})]


def test_each_part_is_optional() -> None:
    before = domxml.serialize(domxml.parse(WIN10))
    assert tune.tune(WIN10, TuneSpec(None, hyperv=None, spice=False)) == before


@pytest.mark.parametrize("topo", [KABY_LAKE, NO_SMT])
def test_tuning_twice_changes_nothing(topo: Topology) -> None:
    spec = TuneSpec(topo, hyperv=ALL_HYPERV)
    once = tune.tune(WIN10, spec)
    assert tune.tune(once, spec) == once
    bare = "<domain type='kvm'><name>x</name><devices/></domain>"
    once = tune.tune(bare, spec)
    assert tune.tune(once, spec) == once
    assert domxml.diff(once, tune.tune(once, spec), "x") == ""


def test_checks_follow_the_guide() -> None:
    ids = [c[0] for c in tune.checks(WIN10)]
    assert ids == ["usb3", "channel-vdagent", "channel-webdav", "channel-guest-agent"]
    good = WIN10.replace("<video>", """
      <controller type='usb' model='qemu-xhci'/>
      <controller type='scsi' model='virtio-scsi'/>
      <disk type='file' device='disk'><source file='/v/win.qcow2'/><target dev='sda' bus='scsi'/></disk>
      <disk type='file' device='cdrom'><source file='/iso/virtio-win-0.1.240.iso'/><target dev='sdb' bus='scsi'/></disk>
      <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>
      <channel type='spiceport'><source channel='org.spice-space.webdav.0'/><target type='virtio' name='org.spice-space.webdav.0'/></channel>
      <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
      <video>""")
    assert tune.checks(good) == []
    bad = WIN10.replace("pc-q35-7.2", "pc-i440fx-7.2").replace("<video>", """
      <disk type='file' device='disk'><target dev='sda' bus='scsi'/></disk><video>""")
    ids = [c[0] for c in tune.checks(bad)]
    assert ids[:3] == ["machine-q35", "disk-virtio-scsi", "driver-iso"]
    sata = WIN10.replace("<video>", "<disk device='disk'><target bus='sata'/></disk><video>")
    assert "disk-bus" in [c[0] for c in tune.checks(sata)]


@pytest.mark.parametrize("cores, first_core, expected", [
    (((0, 1),), True, (2, 1, 2, (0, 1))),  # 2 threads, SMT: only CPU 0's core, if asked
    (((0,), (1,)), False, (1, 1, 1, (1,))),  # 2 threads, no SMT
    (((0, 2), (1, 3)), False, (2, 1, 2, (1, 3))),  # 4 threads, SMT
    (((0,), (1,), (2,), (3,)), False, (3, 3, 1, (1, 2, 3))),  # 4 threads, no SMT
    (((0, 4), (1, 5), (2, 6), (3, 7)), True, (8, 4, 2, (0, 4, 1, 5, 2, 6, 3, 7))),
    (tuple((c,) for c in range(8)), False, (7, 7, 1, tuple(range(1, 8)))),
])
def test_default_plan_on_each_host(cores: tuple[tuple[int, ...], ...], first_core: bool,
                                   expected: tuple[int, int, int, tuple[int, ...]]) -> None:
    plan = tune.plan_cpus(Topology(cores), None, True, first_core)
    assert (plan.vcpus, plan.cores, plan.threads, plan.pins) == expected

"""`gvt-client new` and `view` on the simulated host (libvirt's test driver, whose pool
`default` is in the simulation's node XML), called as the stranger with polkit answering:
what is made, the refusals (each with nothing made), and the descriptors a caller sends."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import Variant

from gvtd import names
from harness import STRANGER, STRANGER_GID, DBusDaemon, Simulation, tree_snapshot
from logind import Logind
from windows_vm import check_windows_domain, stranger_isos


@pytest.fixture(scope="module")
def media() -> Iterator[tuple[Path, Path]]:
    with stranger_isos() as isos:
        yield isos


def new(sim: Simulation, media: tuple[Path, Path], name: str, *extra: str
        ) -> subprocess.CompletedProcess[str]:
    return sim.gvt_client("new", name, "--iso", str(media[0]), "--virtio-win", str(media[1]),
                          *extra)


def made_nothing(sim: Simulation, before: dict[str, bytes], name: str) -> None:
    assert tree_snapshot(sim.config_dir) == before
    assert name not in sim.client.vgpus()
    assert names.domain_path(name) not in sim.client.objects()


def test_dry_run_prints_everything_and_makes_nothing(sim: Simulation,
                                                     media: tuple[Path, Path]) -> None:
    before = tree_snapshot(sim.config_dir)
    dry = new(sim, media, "w11", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    volume = dry.stdout[dry.stdout.index("<volume>"):dry.stdout.index("</volume>") + 9]
    assert ET.fromstring(volume).findtext("name") == "w11.qcow2"
    assert "preallocation=metadata and lazy_refcounts" in dry.stdout
    domain = ET.fromstring(dry.stdout[dry.stdout.index("<domain "):])
    check_windows_domain(domain)
    assert domain.find("devices/hostdev[@type='mdev']") is not None
    # its sound plays on the caller's own PulseAudio socket, derived from the uid the bus
    # reports, and --no-audio leaves the card out
    assert [a.get("serverName") for a in domain.iterfind("devices/audio[@type='pulseaudio']")
            ] == [f"unix:{names.sound_socket(STRANGER)}"]
    assert domain.find("devices/sound[@model='ich9']") is not None
    quiet = new(sim, media, "w11", "--dry-run", "--no-audio")
    assert quiet.returncode == 0, quiet.stderr
    domain = ET.fromstring(quiet.stdout[quiet.stdout.index("<domain "):])
    assert domain.find("devices/audio[@type='pulseaudio']") is None
    assert domain.find("devices/sound") is None
    made_nothing(sim, before, "w11")


def test_new_makes_the_vm_with_its_vgpu_and_view_attaches(sim: Simulation,
                                                          media: tuple[Path, Path],
                                                          system_logind: Logind) -> None:
    made = new(sim, media, "w11")
    assert made.returncode == 0, made.stderr
    assert "gvt-client start w11; gvt-client view w11" in made.stdout
    vgpu = sim.client.vgpus()["w11"]
    assert (vgpu["Domain"], vgpu["Start"], vgpu["Type"]) == ("w11", "on-demand",
                                                            "i915-GVTg_V5_4")
    domain = sim.client.props(names.domain_path("w11"), names.DOMAIN_IFACE)
    assert domain["VGPUs"] == [names.vgpu_path(vgpu["UUID"])]
    assert domain["Display"] == "spice" and domain["State"] == "shut-off"
    uri = sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["LibvirtURI"]
    assert uri.startswith("test://")

    shown = sim.gvt_client("view", "--print", "w11")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["virt-viewer", "--connect", uri, "--attach", "--wait",
                                    "w11"]
    # --start starts it through gvtd (its on-demand vGPU with it) before viewing; its
    # SPICE GL display wants the caller's desktop session
    runtime = Path(tempfile.mkdtemp(prefix="gvtd-stranger-run-"))
    os.chown(runtime, STRANGER, STRANGER_GID)
    session = system_logind.add_session("w11", STRANGER, "nobody", "wayland", "", runtime)
    try:
        started = sim.gvt_client("view", "--start", "--print", "w11")
    finally:
        system_logind.remove_session(session)
        shutil.rmtree(runtime)
    assert started.returncode == 0, started.stderr
    assert sim.client.vgpus()["w11"]["State"] == "active"
    assert sim.client.props(names.domain_path("w11"), names.DOMAIN_IFACE)["State"] == "running"

    again = new(sim, media, "w11")  # the name is taken now
    assert again.returncode == 1 and "libvirt has a domain named w11" in again.stderr


def test_view_without_virt_viewer_or_display_says_what_to_do(sim: Simulation,
                                                             tmp_path: Path) -> None:
    (tmp_path / "setpriv").symlink_to(shutil.which("setpriv"))
    env = dict(sim.stranger_env, PATH=str(tmp_path))  # no virt-viewer on it
    cmd = [sys.executable, "-m", "gvtd.client.main", "--session", "view", "win10"]
    p = subprocess.run(sim.as_stranger(cmd), env=env, cwd=sim.home, capture_output=True,
                       text=True)
    assert p.returncode == 1 and "install the virt-viewer package" in p.stderr
    env = {k: v for k, v in sim.stranger_env.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    p = subprocess.run(sim.as_stranger(cmd), env=env, cwd=sim.home, capture_output=True,
                       text=True)
    assert p.returncode == 1 and "No graphical session here" in p.stderr
    assert "virt-viewer --connect" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize(("extra", "error"), [
    (("--pool", "nowhere"), "no storage pool named nowhere"),
    (("--disk-size", "500"), "GiB free, and the disk may grow to 500 GiB"),
    (("--min-resolution", "7680x4320"), "7680x4320"),
    (("--memory", "12"), "memory_mib"),
])
def test_refusals_make_nothing(sim: Simulation, media: tuple[Path, Path],
                               extra: tuple[str, ...], error: str) -> None:
    before = tree_snapshot(sim.config_dir)
    p = new(sim, media, "w11", *extra)
    assert p.returncode == 1 and error in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    made_nothing(sim, before, "w11")


def test_a_name_in_use_is_refused(sim: Simulation, media: tuple[Path, Path]) -> None:
    before = tree_snapshot(sim.config_dir)
    p = new(sim, media, "win10")  # the simulation's own domain
    assert p.returncode == 1 and "libvirt has a domain named win10 already" in p.stderr
    assert tree_snapshot(sim.config_dir) == before


def test_isos_the_caller_or_qemu_cannot_read_are_refused(sim: Simulation,
                                                         media: tuple[Path, Path]) -> None:
    before = tree_snapshot(sim.config_dir)
    missing = sim.gvt_client("new", "w11", "--iso", "/nonexistent/Win11.iso",
                             "--virtio-win", str(media[1]))
    assert missing.returncode == 1 and "Cannot read the ISO /nonexistent/Win11.iso" in \
        missing.stderr
    secret = sim.gvt_client("new", "w11", "--iso", "/etc/shadow", "--virtio-win",
                            str(media[1]))
    assert secret.returncode == 1 and "Permission denied" in secret.stderr
    # the stranger's own home: readable by the stranger, not by QEMU's user
    home_iso = sim.home / "Win11.iso"
    shutil.copy(media[0], home_iso)
    os.chown(home_iso, STRANGER, STRANGER_GID)
    hidden = sim.gvt_client("new", "w11", "--iso", str(home_iso), "--virtio-win",
                            str(media[1]))
    assert hidden.returncode == 1 and "cannot enter" in hidden.stderr, hidden.stderr
    no_drivers = sim.gvt_client("new", "w11", "--iso", str(media[0]))
    assert no_drivers.returncode == 1 and names.VIRTIO_WIN_URL in no_drivers.stderr
    made_nothing(sim, before, "w11")


CALLER = """\
import asyncio, os, sys
from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus

async def main():
    bus = await MessageBus(bus_address=os.environ["DBUS_SESSION_BUS_ADDRESS"],
                           negotiate_unix_fd=True).connect()
    path, flags, member, sig = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    fd = os.open(sys.argv[5], flags)
    if member == "NewDomain":
        body = ["w11", 0, 0, {"iso": Variant("s", path), "virtio_win": Variant("s", path)}]
    else:
        body = [{"name": Variant("s", "x"), "type": Variant("s", "nope")}]
    for _ in range(int(sys.argv[6])):
        reply = await bus.call(Message(destination="io.github.gvtd1", path="/io/github/gvtd1",
                                       interface="io.github.gvtd1.Manager", member=member,
                                       signature=sig, body=body,
                                       unix_fds=[fd] if sys.argv[7] == "fds" else []))
    print(reply.error_name or "ok", reply.body[0] if reply.body else "")

asyncio.run(main())
"""


def call_with_fd(sim: Simulation, path: str, flags: int, opened: str, member: str = "NewDomain",
                 signature: str = "shha{sv}", times: int = 1, send: bool = True) -> str:
    p = subprocess.run(sim.as_stranger([sys.executable, "-c", CALLER, path, str(flags), member,
                                        signature, opened, str(times),
                                        "fds" if send else "none"]),
                       env=sim.stranger_env, cwd=sim.home, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_a_path_comes_only_with_a_readable_descriptor_of_that_file(
        sim: Simulation, media: tuple[Path, Path]) -> None:
    """A caller names /etc/shadow and passes a file it may read, or an O_PATH descriptor
    of /etc/shadow itself (which needs no read permission): both are refused."""
    before = tree_snapshot(sim.config_dir)
    other = call_with_fd(sim, "/etc/shadow", os.O_RDONLY, str(media[0]))
    assert other.startswith(names.ERROR_PREFIX + "InvalidArgument") and \
        "is not /etc/shadow" in other
    o_path = call_with_fd(sim, "/etc/shadow", os.O_PATH, "/etc/shadow")
    assert o_path.startswith(names.ERROR_PREFIX + "InvalidArgument") and \
        "not open for reading" in o_path
    # no descriptor at all: the bare index must not be taken for one of gvtd's own files
    bare = call_with_fd(sim, str(media[0]), os.O_RDONLY, str(media[0]), send=False)
    assert bare.startswith(names.ERROR_PREFIX + "InvalidArgument") and "passed open" in bare
    made_nothing(sim, before, "w11")


def test_descriptors_sent_with_other_calls_are_closed(sim: Simulation,
                                                      media: tuple[Path, Path]) -> None:
    pid = sim.sim_props()["DaemonPid"]
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    out = call_with_fd(sim, str(media[0]), os.O_RDONLY, str(media[0]), member="Define",
                       signature="a{sv}", times=50)
    assert out.startswith(names.ERROR_PREFIX)  # type "nope" is refused; the fds arrived
    out = call_with_fd(sim, "/etc/shadow", os.O_RDONLY, str(media[0]), times=50)
    assert "is not /etc/shadow" in out
    assert len(os.listdir(f"/proc/{pid}/fd")) < fds + 10


def test_new_needs_both_polkit_actions(sim: Simulation, media: tuple[Path, Path]) -> None:
    assert sim.polkit is not None
    before = tree_snapshot(sim.config_dir)
    for allowed in ([names.ACTION_DOMAIN], [names.ACTION_MANAGE]):
        sim.polkit.allow(allowed)
        p = new(sim, media, "w11")
        assert p.returncode == 1 and "Not authorized" in p.stderr, p.stderr
        made_nothing(sim, before, "w11")


def test_windows_11_refuses_a_7th_generation_cpu(dbus: DBusDaemon,
                                                 media: tuple[Path, Path]) -> None:
    sim = Simulation(dbus, profile="kabylake-7th")
    try:
        before = tree_snapshot(sim.config_dir)
        p = new(sim, media, "w11")
        assert p.returncode == 1, p.stderr
        assert "i7-7500U" in p.stderr and "Kaby Lake (7th generation)" in p.stderr
        assert "--windows 10" in p.stderr and "BypassCPUCheck" in p.stderr
        made_nothing(sim, before, "w11")
        ten = new(sim, media, "w10", "--windows", "10", "--disk-size", "16")
        assert ten.returncode == 0, ten.stderr
        bypass = new(sim, media, "w11", "--allow-unsupported-cpu", "--disk-size", "16")
        assert bypass.returncode == 0, bypass.stderr
    finally:
        sim.stop()


def test_new_on_an_sriov_host_gives_the_vm_a_vf(dbus: DBusDaemon,
                                                media: tuple[Path, Path]) -> None:
    """The Alder Lake laptop has no GVT-g: the VM gets an on-demand VF (type vf, parent
    auto), a PCI hostdev at its VF's address with QXL kept as the display, and StartDomain
    makes the VF."""
    sim = Simulation(dbus, profile="alderlake-sriov")
    try:
        before = tree_snapshot(sim.config_dir)
        p = new(sim, media, "w11", "--min-resolution", "1920x1080", "--dry-run")
        assert p.returncode == 1 and "leave out --min-resolution" in p.stderr, p.stderr
        made_nothing(sim, before, "w11")
        dry = new(sim, media, "w11", "--disk-size", "16", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        domain = ET.fromstring(dry.stdout[dry.stdout.index("<domain "):])
        assert [(h.get("type"), h.get("managed"), h.find("source/address").attrib)
                for h in domain.iterfind("devices/hostdev")] == [
            ("pci", "no", {"domain": "0x0000", "bus": "0x00", "slot": "0x02",
                           "function": "0x1"})]
        assert [m.get("type") for m in domain.iterfind("devices/video/model")] == ["qxl"]
        assert domain.find("devices/graphics/gl") is None  # no mdev display options
        assert "x-igd-opregion" not in dry.stdout and "ramfb" not in dry.stdout
        made_nothing(sim, before, "w11")
        made = new(sim, media, "w11", "--disk-size", "16")
        assert made.returncode == 0, made.stderr
        v = sim.client.vgpus()["w11"]
        assert (v["Type"], v["Parent"], v["Start"], v["Backend"], v["Address"], v["State"]) \
            == ("vf", "0000:00:02.0", "on-demand", "sriov", "0000:00:02.1", "inactive")
        # the domain made has that hostdev: attaching the VF again changes nothing
        again = sim.client.call("AttachVGPU", "ssa{sv}", ["w11", "w11",
                                                          {"dry_run": Variant("b", True)}])[0]
        assert again.startswith(names.PICTURE_LINE), again
        shown = sim.client.props(names.domain_path("w11"), names.DOMAIN_IFACE)
        assert shown["VGPUs"] == [names.vgpu_path(v["UUID"])]
        sim.client.call("StartDomain", "sa{sv}", ["w11", {}])
        assert sim.client.vgpus()["w11"]["State"] == "active"
        vf = sim.root / "sys/bus/pci/devices/0000:00:02.1/driver"
        assert Path(vf.readlink()).name == "vfio-pci"
    finally:
        sim.stop()


def test_a_failure_midway_undoes_the_volume(sim: Simulation, media: tuple[Path, Path]) -> None:
    """vgpus.d/w11.toml written by hand and not reloaded: gvtd never replaces it, so the
    vGPU's definition fails after the volume was made, and the volume goes again."""
    hand = sim.config_dir / "vgpus.d" / "w11.toml"
    hand.parent.mkdir(exist_ok=True)
    hand.write_text('type = "i915-GVTg_V5_8"\n')
    p = new(sim, media, "w11", "--disk-size", "16")
    assert p.returncode == 1 and "w11.toml" in p.stderr, p.stderr
    assert names.domain_path("w11") not in sim.client.objects()
    hand.unlink()
    # the volume's name is free again (a volume left behind would be Busy)
    again = new(sim, media, "w11", "--disk-size", "16", "--no-vgpu")
    assert again.returncode == 0, again.stderr

"""`gvt-client new` against a real libvirtd with the QEMU driver (a private one, in network
and mount namespaces of its own: see tests/libvirtd.py), with the real OVMF, swtpm and
qemu-img.

The VM that `new` makes starts through gvtd; its firmware runs, and Secure Boot with
Microsoft's keys is on (OVMF refuses to start its own unsigned shell: "Security
Violation" on the serial console); swtpm runs beside QEMU; the disk is a qcow2 volume of
the pool with its metadata preallocated and lazy refcounts. Guests run under TCG (`--virt-
type qemu`): this machine's /dev/kvm boots no stock guest. No Windows is installed: the
ISO is a file of zeros, which the firmware finds nothing to boot on.
"""

from __future__ import annotations

import json
import queue
import select
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from gvtd import names
from harness import DBusDaemon, Simulation
from libvirtd import PrivateLibvirtd, domain_xml
from windows_vm import check_windows_domain, stranger_isos
from xserver import Xvfb

BOOT_DEADLINE = 240.0  # TCG: OVMF reaches its boot manager in about 20 s here
POOL_DIR = "/var/lib/libvirt/images"  # inside libvirtd's namespace: its lib/images


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[PrivateLibvirtd]:
    lv = PrivateLibvirtd(tpm=True, network=True)
    try:
        lv.virsh("pool-define-as", "default", "dir", "--target", POOL_DIR)
        lv.virsh("pool-build", "default")
        lv.virsh("pool-start", "default")
        lv.virsh("net-define", "/usr/share/libvirt/networks/default.xml")
        lv.virsh("net-start", "default")
        yield lv
    finally:
        lv.stop()


@pytest.fixture(scope="module")
def media() -> Iterator[tuple[Path, Path]]:
    with stranger_isos(2 * 1024 * 1024) as isos:
        yield isos


@pytest.fixture
def gvtd(libvirtd: PrivateLibvirtd, tmp_path: Path) -> Iterator[Simulation]:
    (tmp_path / "gvtd.toml").write_text(
        f'libvirt_uri = "{libvirtd.uri}"\n'
        f'qemu_conf = "{libvirtd.dir / "etc" / "qemu.conf"}"\n')
    dbus = DBusDaemon()
    sim = Simulation(dbus, config_dir=tmp_path)
    try:
        if not sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["LibvirtConnected"]:
            sim.client.wait_for(lambda m: m.member == "PropertiesChanged"
                                and m.body[1].get("LibvirtConnected") is not None)
        yield sim
    finally:
        sim.stop()
        dbus.stop()
        libvirtd.clear()
        for vol in volumes(libvirtd):
            libvirtd.virsh("vol-delete", vol, "--pool", "default")


def volumes(lv: PrivateLibvirtd) -> list[str]:
    return [line.split()[0] for line in lv.virsh("vol-list", "default").stdout.splitlines()
            if line.strip()]


def new(sim: Simulation, media: tuple[Path, Path], name: str, *extra: str
        ) -> subprocess.CompletedProcess[str]:
    iso, drivers = media
    return sim.gvt_client("new", name, "--iso", str(iso), "--virtio-win", str(drivers),
                          "--virt-type", "qemu", "--memory", "1024", "--vcpus", "2",
                          "--no-pinning", "--disk-size", "16",
                          # no sound server runs for the stranger here, and QEMU does not
                          # start without the one its sound goes to (test_sound.py has it)
                          "--no-audio", *extra)


def volume_file(lv: PrivateLibvirtd, volume: str) -> Path:
    path = lv.virsh("vol-path", "--pool", "default", volume).stdout.strip()
    assert path == f"{POOL_DIR}/{volume}"
    return lv.dir / "lib" / "images" / volume  # the same file, seen from outside


def qemu_img(*args: str) -> object:
    return json.loads(subprocess.run(["qemu-img", *args, "--output=json"], check=True,
                                     capture_output=True, text=True).stdout)


WATCH_GRAPHICS = """\
import sys, libvirt
libvirt.virEventRegisterDefaultImpl()
conn = libvirt.open(sys.argv[1])
conn.domainEventRegisterAny(conn.lookupByName(sys.argv[2]),
                            libvirt.VIR_DOMAIN_EVENT_ID_GRAPHICS,
                            lambda c, d, phase, *rest: print(phase, flush=True), None)
print("ready", flush=True)
while True:
    libvirt.virEventRunDefaultImpl()
"""


class GraphicsWatch:
    """libvirt's graphics events of one domain (a SPICE client connecting), one line each
    from a process of its own (libvirt takes one event loop per process, and gvtd's tests
    of other modules may have set theirs), registered before it says ready."""

    def __init__(self, uri: str, name: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WATCH_GRAPHICS, uri, name],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"

    def next_phase(self, timeout: float = 60.0) -> int:
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            raise TimeoutError("no graphics event: no viewer connected")
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(60)


class Console:
    """The domain's serial console through libvirt, line by line on a queue."""

    def __init__(self, uri: str, name: str) -> None:
        import libvirt

        self.conn = libvirt.open(uri)
        self.stream = self.conn.newStream(0)
        self.conn.lookupByName(name).openConsole(None, self.stream,
                                                 libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        try:
            while data := self.stream.recv(4096):
                if not isinstance(data, bytes):
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self.lines.put(line.decode(errors="replace"))
        except Exception:
            pass
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float) -> list[str]:
        """The lines up to the first that contains text (TimeoutError past timeout)."""
        seen = []
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"the console closed before {text!r}: {seen}")
            seen.append(line)
            if text in line:
                return seen

    def close(self) -> None:
        try:
            self.stream.abort()
        except Exception:
            pass
        self.conn.close()


def test_new_vm_starts_with_secure_boot_firmware_and_tpm(gvtd: Simulation,
                                                        libvirtd: PrivateLibvirtd,
                                                        media: tuple[Path, Path]) -> None:
    made = new(gvtd, media, "w11", "--no-vgpu")
    assert made.returncode == 0, made.stderr
    assert "Made w11" in made.stdout and "gvt-client view w11" in made.stdout

    check_windows_domain(ET.fromstring(libvirtd.virsh("dumpxml", "--inactive", "w11").stdout))
    # the disk: a qcow2 volume of the pool, metadata preallocated, lazy refcounts
    disk = volume_file(libvirtd, "w11.qcow2")
    info = qemu_img("info", str(disk))
    assert info["format"] == "qcow2" and info["virtual-size"] == 16 * 1024 ** 3
    assert info["format-specific"]["data"]["lazy-refcounts"] is True
    extents = qemu_img("map", str(disk))
    assert all("offset" in e for e in extents), extents[:3]  # every cluster's L2 entry made
    assert sum(e["length"] for e in extents) == info["virtual-size"]

    # started through gvtd, as the stranger with polkit answering
    started = gvtd.gvt_client("start", "w11")
    assert started.returncode == 0, started.stderr
    assert libvirtd.domstate("w11") == "running"
    live = ET.fromstring(libvirtd.virsh("dumpxml", "w11").stdout)
    loader = live.findtext("os/loader")
    assert loader == "/usr/share/OVMF/OVMF_CODE_4M.ms.fd", loader  # autoselected: MS keys
    assert live.find("os/loader").get("secure") == "yes"
    assert live.findtext("os/nvram").endswith("w11_VARS.fd")

    # swtpm beside QEMU
    pidfiles = list((libvirtd.dir / "run" / "qemu" / "swtpm").glob("*w11-swtpm.pid"))
    assert len(pidfiles) == 1, list((libvirtd.dir / "run" / "qemu").rglob("*"))
    pid = int(pidfiles[0].read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0].endswith(b"swtpm") and b"--tpm2" in cmdline, cmdline

    # the firmware runs, with Secure Boot on: from a reset, with the console open
    console = Console(libvirtd.uri, "w11")
    try:
        libvirtd.virsh("reset", "w11")
        lines = console.wait_for("Security Violation", BOOT_DEADLINE)
    finally:
        console.close()
    assert any("DVD-ROM" in line for line in lines), lines  # the installer's CD was tried
    assert libvirtd.domstate("w11") == "running"

    # gvt-client view: virt-viewer attached through libvirt (root's here: the private
    # libvirtd's socket is root's alone), on an X server; SPICE sees a client arrive
    import libvirt

    x = Xvfb()
    watch = GraphicsWatch(libvirtd.uri, "w11")
    viewer = subprocess.Popen(
        [sys.executable, "-m", "gvtd.client.main", "--session", "view", "w11"],
        env=dict(gvtd.env, DISPLAY=x.display, XAUTHORITY=str(x.auth)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        phase = watch.next_phase()
        assert phase in (libvirt.VIR_DOMAIN_EVENT_GRAPHICS_CONNECT,
                         libvirt.VIR_DOMAIN_EVENT_GRAPHICS_INITIALIZE)
        assert viewer.poll() is None  # it is virt-viewer now, showing the VM
        assert Path(f"/proc/{viewer.pid}/exe").resolve().name == "virt-viewer"
    finally:
        viewer.terminate()
        viewer.wait(60)
        watch.close()
        x.stop()


def test_new_vm_with_vgpu_is_accepted_by_libvirt_and_dry_run_makes_nothing(
        gvtd: Simulation, libvirtd: PrivateLibvirtd, media: tuple[Path, Path]) -> None:
    dry = new(gvtd, media, "w11", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "<volume>" in dry.stdout and "<domain " in dry.stdout
    assert libvirtd.virsh("list", "--all", "--name").stdout.split() == []
    assert volumes(libvirtd) == []
    assert "w11" not in gvtd.client.vgpus()

    made = new(gvtd, media, "w11")
    assert made.returncode == 0, made.stderr
    xml = ET.fromstring(libvirtd.virsh("dumpxml", "--inactive", "w11").stdout)
    check_windows_domain(xml)
    uuid = gvtd.client.vgpus()["w11"]["UUID"]
    hostdev = xml.find("devices/hostdev[@type='mdev']")
    assert hostdev is not None and hostdev.find("source/address").get("uuid") == uuid
    assert hostdev.get("display") == "on" and hostdev.get("ramfb") == "on"
    assert xml.find("devices/graphics[@type='spice']/gl").get("rendernode", "").startswith(
        "/dev/dri/renderD")
    q = "{http://libvirt.org/schemas/domain/qemu/1.0}"
    assert xml.find(f"{q}override/{q}device/{q}frontend/{q}property").get("name") == \
        "x-igd-opregion"
    assert gvtd.client.vgpus()["w11"]["Start"] == "on-demand"


def test_view_has_nothing_to_open_for_gtk_gl(gvtd: Simulation,
                                             libvirtd: PrivateLibvirtd) -> None:
    """QEMU's own window is the display (the qemu namespace, which only a real libvirtd
    keeps, says so)."""
    libvirtd.define(domain_xml("g"))
    gvtd.client.define(name="g", type="i915-GVTg_V5_8", start="manual", domain="g")
    attached = gvtd.gvt_client("attach", "g", "g", "--display", "gtk-gl")
    assert attached.returncode == 0, attached.stderr
    assert gvtd.client.props(names.domain_path("g"), names.DOMAIN_IFACE)["Display"] == \
        "gtk-gl"
    p = gvtd.gvt_client("view", "g")
    assert p.returncode == 0 and "QEMU's own window" in p.stdout, p.stderr
    assert "virt-viewer" not in p.stdout


def test_windows_10_starts_on_the_guides_bios(gvtd: Simulation, libvirtd: PrivateLibvirtd,
                                              media: tuple[Path, Path]) -> None:
    made = new(gvtd, media, "w10", "--windows", "10", "--no-vgpu")
    assert made.returncode == 0, made.stderr
    check_windows_domain(ET.fromstring(libvirtd.virsh("dumpxml", "--inactive", "w10").stdout),
                         "10")
    started = gvtd.gvt_client("start", "w10")
    assert started.returncode == 0, started.stderr
    live = ET.fromstring(libvirtd.virsh("dumpxml", "w10").stdout)
    assert live.find("os/loader") is None and live.find("devices/tpm") is None  # SeaBIOS
    assert libvirtd.domstate("w10") == "running"

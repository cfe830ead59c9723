"""What `gvt-client new` is given (the stranger's ISOs) and what the domain it makes must
have, checked on libvirt's XML of it: the guide's devices and gvtd's."""

from __future__ import annotations

import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import STRANGER, STRANGER_GID


@contextmanager
def stranger_isos(size: int = 4096) -> Iterator[tuple[Path, Path]]:
    """A Windows ISO and a virtio-win ISO of the stranger's, which QEMU's user may read
    (zeros: nothing boots from them)."""
    d = Path(tempfile.mkdtemp(prefix="gvtd-media-"))
    d.chmod(0o755)
    iso, drivers = d / "Win11_x64.iso", d / "virtio-win.iso"
    try:
        for f in (iso, drivers):
            f.write_bytes(bytes(size))
            f.chmod(0o644)
            os.chown(f, STRANGER, STRANGER_GID)
        yield iso, drivers
    finally:
        shutil.rmtree(d)


def check_windows_domain(root: ET.Element, windows: str = "11", pool: str = "default",
                         network: str = "default") -> None:
    name = root.findtext("name")
    assert root.find("os/type").get("machine", "").startswith(("q35", "pc-q35"))
    devices = root.find("devices")
    if windows == "11":
        assert root.find("os").get("firmware") == "efi"
        features = {f.get("name"): f.get("enabled")
                    for f in root.findall("os/firmware/feature")}
        assert features["secure-boot"] == "yes" and features["enrolled-keys"] == "yes"
        assert root.find("features/smm").get("state") == "on"
        tpm = devices.find("tpm")
        assert tpm.get("model") == "tpm-crb"
        assert tpm.find("backend").get("type") == "emulator"
        assert tpm.find("backend").get("version") == "2.0"
    else:
        assert root.find("os").get("firmware") is None and devices.find("tpm") is None
    disk = devices.find("disk[@device='disk']")
    assert disk.get("type") == "volume"
    assert disk.find("source").attrib == {"pool": pool, "volume": f"{name}.qcow2"}
    assert disk.find("driver").get("type") == "qcow2"
    assert disk.find("driver").get("discard") == "unmap"
    assert disk.find("target").get("bus") == "scsi"
    assert devices.find("controller[@type='scsi']").get("model") == "virtio-scsi"
    cdroms = devices.findall("disk[@device='cdrom']")
    assert len(cdroms) == 2 and all(c.find("readonly") is not None for c in cdroms)
    assert cdroms[0].find("boot").get("order") == "1"  # the installer
    assert "virtio-win" in cdroms[1].find("source").get("file")
    assert all(c.find("target").get("bus") == "sata" for c in cdroms)  # Setup reads SATA
    assert any(c.get("model") == "qemu-xhci" for c in devices.findall("controller[@type='usb']"))
    channels = {c.find("target").get("name"): c.get("type") for c in devices.findall("channel")}
    assert channels["com.redhat.spice.0"] == "spicevmc"
    assert channels["org.spice-space.webdav.0"] == "spiceport"
    assert channels["org.qemu.guest_agent.0"] == "unix"
    assert devices.find("video/model").get("type") == "qxl"
    graphics = devices.find("graphics[@type='spice']")
    assert [listen.get("type") for listen in graphics.findall("listen")] == ["none"]
    assert graphics.get("port") in (None, "-1") and graphics.get("autoport") in (None, "no")
    nic = devices.find("interface")
    assert nic.get("type") == "network" and nic.find("source").get("network") == network
    cpu = root.find("cpu")
    assert cpu.get("mode") == ("maximum" if root.get("type") == "qemu" else "host-passthrough")

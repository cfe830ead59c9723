"""The new VM's XML and volume (valid for libvirt's schemas, every device the guide wants),
what the host must have for it, the Windows 11 CPU check, and the proof of an ISO."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from gvtd import win11cpu
from gvtd.errors import Failed, InvalidArgument, NotFound
from gvtd.newvm import prove_readable
from gvtd.virt import newdomain
from windows_vm import check_windows_domain

SPEC = newdomain.NewSpec(name="win11", iso="/srv/iso/Win11.iso",
                         virtio_win="/srv/iso/virtio-win.iso")


def validate(tmp_path: Path, xml: str, schema: str) -> None:
    path = tmp_path / f"{schema}.xml"
    path.write_text(xml)
    p = subprocess.run(["virt-xml-validate", str(path), schema], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("windows", ["11", "10"])
def test_domain_is_valid_and_has_the_guides_devices(tmp_path: Path, windows: str) -> None:
    xml = newdomain.domain_xml(SPEC.model_copy(update={"windows": windows}))
    validate(tmp_path, xml, "domain")
    check_windows_domain(ET.fromstring(xml), windows)


def test_user_text_is_never_markup() -> None:
    spec = SPEC.model_copy(update={"iso": "/srv/a'/><disk type='block'>/x.iso"})
    root = ET.fromstring(newdomain.domain_xml(spec))
    assert root.find("devices/disk[@device='cdrom']/source").get("file") == spec.iso
    assert len(root.findall("devices/disk")) == 3


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "x" * 64, "w<11"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="name"):
        newdomain.spec_from({"name": name, "iso": "/a", "virtio_win": "/b"})


def test_volume_is_valid_qcow2_with_lazy_refcounts(tmp_path: Path) -> None:
    xml = newdomain.volume_xml(SPEC)
    validate(tmp_path, xml, "storagevol")
    root = ET.fromstring(xml)
    assert root.findtext("name") == "win11.qcow2"
    assert root.find("target/format").get("type") == "qcow2"
    assert root.find("target/features/lazy_refcounts") is not None


def test_secure_boot_firmware_of_the_ovmf_package_is_found(tmp_path: Path) -> None:
    found = newdomain.secure_firmware()
    assert found is not None and "secure" in found.name  # Debian's 40-edk2-...-enrolled
    newdomain.check_host(SPEC)
    assert newdomain.secure_firmware(tmp_path) is None
    with pytest.raises(Failed, match="install the ovmf package"):
        newdomain.check_host(SPEC, tmp_path)
    newdomain.check_host(SPEC.model_copy(update={"windows": "10"}), tmp_path)  # BIOS


def test_missing_swtpm_names_the_packages(tmp_path: Path) -> None:
    with pytest.raises(Failed, match="swtpm and swtpm-tools packages"):
        newdomain.check_host(SPEC, path=str(tmp_path))


def cpu(tmp_path: Path, name: str, model: int, stepping: int,
        vendor: str = "GenuineIntel", family: int = 6) -> win11cpu.Cpu | None:
    (tmp_path / "cpuinfo").write_text(
        f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
        f"model name\t: {name}\nstepping\t: {stepping}\n\nprocessor\t: 1\n")
    return win11cpu.read(tmp_path)


@pytest.mark.parametrize(("name", "model", "stepping", "refused"), [
    ("Intel(R) Core(TM) i7-7500U CPU @ 2.70GHz", 142, 9, "Kaby Lake"),
    ("Intel(R) Core(TM) i7-7700HQ CPU @ 2.80GHz", 158, 9, "Kaby Lake"),
    ("Intel(R) Core(TM) i5-6200U CPU @ 2.30GHz", 78, 3, "Skylake"),
    ("Intel(R) Core(TM) i7-5600U CPU @ 2.60GHz", 61, 4, "Broadwell"),
    ("Intel(R) Core(TM) i7-8550U CPU @ 1.80GHz", 142, 10, None),  # Kaby Lake-R
    ("Intel(R) Core(TM) m3-8100Y CPU @ 1.10GHz", 142, 9, None),  # Amber Lake
    ("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", 158, 10, None),  # Coffee Lake
    ("Intel(R) Core(TM) i5-10210U CPU @ 1.60GHz", 142, 12, None),  # Comet Lake
])
def test_windows_11_cpu_check(tmp_path: Path, name: str, model: int, stepping: int,
                              refused: str | None) -> None:
    why = win11cpu.refusal(cpu(tmp_path, name, model, stepping))
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why and "--windows 10" in why
        assert "BypassCPUCheck" in why


def test_other_cpus_and_no_cpuinfo_are_left_to_setup(tmp_path: Path) -> None:
    assert win11cpu.refusal(cpu(tmp_path, "AMD EPYC", 17, 1, "AuthenticAMD", 25)) is None
    assert win11cpu.read(tmp_path / "none") is None


@pytest.fixture
def iso() -> Iterator[Path]:
    """An ISO where QEMU's user may read it (pytest's own directories are root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="gvtd-iso-"))
    d.chmod(0o755)
    path = d / "win.iso"
    path.write_bytes(b"CD001")
    path.chmod(0o644)
    yield path
    shutil.rmtree(d)


def test_an_iso_passed_open_is_accepted(iso: Path) -> None:
    fd = os.open(iso, os.O_RDONLY)
    try:
        assert prove_readable(str(iso), fd, "libvirt-qemu") == str(iso)
    finally:
        os.close(fd)


def test_another_file_or_an_unreadable_descriptor_is_refused(iso: Path) -> None:
    """An O_PATH descriptor needs no read permission (/etc/shadow opens that way for
    anyone), and a descriptor of another file proves nothing about the path."""
    for flags, path, error in ((os.O_PATH, "/etc/shadow", "not open for reading"),
                               (os.O_RDONLY, str(iso), "not open for reading")):
        fd = os.open(path, flags) if flags == os.O_PATH else os.open(os.devnull, os.O_WRONLY)
        try:
            with pytest.raises(InvalidArgument, match=error):
                prove_readable(path, fd, "libvirt-qemu")
        finally:
            os.close(fd)
    fd = os.open(iso, os.O_RDONLY)
    try:
        with pytest.raises(InvalidArgument, match="is not /etc/shadow"):
            prove_readable("/etc/shadow", fd, "libvirt-qemu")
        with pytest.raises(NotFound):
            prove_readable("/var/lib/gvtd-no-such/gone.iso", fd, "libvirt-qemu")
        with pytest.raises(InvalidArgument, match="sandbox keeps it out"):  # gvtd's, in production
            prove_readable(str(iso.parent / "gone.iso"), fd, "libvirt-qemu")
        with pytest.raises(InvalidArgument, match="absolute"):
            prove_readable("win.iso", fd, "libvirt-qemu")
    finally:
        os.close(fd)
    fd = os.open(iso.parent, os.O_RDONLY)
    try:
        with pytest.raises(InvalidArgument, match="not a regular file"):
            prove_readable(str(iso.parent), fd, "libvirt-qemu")
    finally:
        os.close(fd)


def test_an_iso_qemu_cannot_reach_is_refused(iso: Path) -> None:
    fd = os.open(iso, os.O_RDONLY)
    try:
        iso.chmod(0o600)
        with pytest.raises(InvalidArgument, match="libvirt-qemu, which cannot read"):
            prove_readable(str(iso), fd, "libvirt-qemu")
        iso.chmod(0o644)
        iso.parent.chmod(0o700)
        with pytest.raises(InvalidArgument, match=f"cannot enter {iso.parent} "):
            prove_readable(str(iso), fd, "libvirt-qemu")
    finally:
        iso.parent.chmod(0o755)
        os.close(fd)

"""A new Windows domain the guide's way: its XML, its disk volume, and what the host must
have installed for it (UEFI firmware with Secure Boot, swtpm).

Windows 11 gets UEFI with Secure Boot and Microsoft's keys enrolled (libvirt picks the
firmware from /usr/share/qemu/firmware/*.json by its features), SMM (which that firmware
requires) and an emulated TPM 2.0; Windows 10 keeps the guide's BIOS. Both get Q35, a qcow2
disk on virtio-scsi with TRIM passed through, the installer and the virtio-win drivers as
SATA CD-ROMs (Windows Setup reads SATA without a driver), USB 3, the SPICE agent, webdav
and guest agent channels, QXL with SPICE listening nowhere, libvirt's NAT network and a
host-passthrough CPU. The XML is built as a tree: no user text is pasted into markup.
"""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gvtd.errors import Failed, InvalidArgument

FIRMWARE_DIR = Path("/usr/share/qemu/firmware")
# What Windows 11 needs of the firmware, as the firmware descriptors name it.
SECURE_FEATURES = ("secure-boot", "enrolled-keys")
LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
OSINFO = {"11": "http://microsoft.com/win/11", "10": "http://microsoft.com/win/10"}
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
ET.register_namespace("libosinfo", LIBOSINFO_NS)  # virt-manager's prefix, not ns0


class NewSpec(BaseModel):
    """What `gvt-client new` asks for; the defaults are the guide's."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str
    iso: str  # absolute paths, proven readable by the caller (see gvtd.newvm)
    virtio_win: str
    windows: Literal["11", "10"] = "11"
    memory_mib: int = Field(8192, ge=1024, le=1024 * 1024)
    vcpus: int | None = Field(None, ge=1, le=512)  # None: tune's choice for this host
    disk_gib: int = Field(64, ge=16, le=64 * 1024)
    pool: str = "default"
    network: str = "default"
    virt_type: Literal["kvm", "qemu"] = "kvm"  # qemu: TCG, for hosts without KVM

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(f"{v[:70]!r} is not a VM name gvtd makes: use up to 63 letters, "
                             "digits, '.', '_' or '-', starting with a letter or digit")
        return v

    @field_validator("pool", "network")
    @classmethod
    def _libvirt_name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(f"{v[:70]!r} is not a libvirt pool or network name")
        return v

    @property
    def volume(self) -> str:
        return f"{self.name}.qcow2"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _cdrom(devices: ET.Element, path: str, dev: str, boot: str | None) -> None:
    disk = _sub(devices, "disk", type="file", device="cdrom")
    _sub(disk, "driver", name="qemu", type="raw")
    _sub(disk, "source", file=path)
    _sub(disk, "target", dev=dev, bus="sata")
    _sub(disk, "readonly")
    if boot:
        _sub(disk, "boot", order=boot)


def domain_xml(spec: NewSpec) -> str:
    """The domain, before gvtd's attach and tune add the vGPU and the guide's tuning."""
    root = ET.Element("domain", type=spec.virt_type)
    _sub(root, "name", spec.name)
    meta = _sub(_sub(root, "metadata"), f"{{{LIBOSINFO_NS}}}libosinfo")
    _sub(meta, f"{{{LIBOSINFO_NS}}}os", id=OSINFO[spec.windows])
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus or 2), placement="static")
    win11 = spec.windows == "11"
    os_el = _sub(root, "os", firmware="efi") if win11 else _sub(root, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="q35")
    if win11:
        fw = _sub(os_el, "firmware")
        for feature in SECURE_FEATURES:
            _sub(fw, "feature", enabled="yes", name=feature)
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if win11:
        _sub(features, "smm", state="on")  # the Secure Boot firmware requires it
    # TCG has no host CPU to pass through: "maximum" is the nearest (as tune writes)
    _sub(root, "cpu", mode="host-passthrough" if spec.virt_type == "kvm" else "maximum",
         check="none", migratable="on")
    clock = _sub(root, "clock", offset="localtime")  # Windows keeps the RTC in local time
    _sub(clock, "timer", name="rtc", tickpolicy="catchup")
    _sub(clock, "timer", name="pit", tickpolicy="delay")
    _sub(clock, "timer", name="hpet", present="no")
    pm = _sub(root, "pm")
    _sub(pm, "suspend-to-mem", enabled="no")
    _sub(pm, "suspend-to-disk", enabled="no")
    devices = _sub(root, "devices")
    disk = _sub(devices, "disk", type="volume", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", discard="unmap")  # TRIM reaches the file
    _sub(disk, "source", pool=spec.pool, volume=spec.volume)
    _sub(disk, "target", dev="sda", bus="scsi")
    _sub(disk, "boot", order="2")
    _cdrom(devices, spec.iso, "sdb", "1")  # the installer boots first
    _cdrom(devices, spec.virtio_win, "sdc", None)
    _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    _sub(devices, "controller", type="usb", index="0", model="qemu-xhci", ports="15")
    nic = _sub(devices, "interface", type="network")
    _sub(nic, "source", network=spec.network)  # NAT: works on Wi-Fi, where a bridge does not
    _sub(nic, "model", type="virtio")
    for kind, name in (("spicevmc", "com.redhat.spice.0"),
                       ("spiceport", "org.spice-space.webdav.0"),
                       ("unix", "org.qemu.guest_agent.0")):
        channel = _sub(devices, "channel", type=kind)
        if kind == "spiceport":
            _sub(channel, "source", channel=name)
        _sub(channel, "target", type="virtio", name=name)
    _sub(devices, "input", type="tablet", bus="usb")
    graphics = _sub(devices, "graphics", type="spice")
    _sub(graphics, "listen", type="none")  # SPICE on a network socket crashes the VM
    _sub(_sub(devices, "video"), "model", type="qxl")
    serial = _sub(devices, "serial", type="pty")  # the firmware's console, for diagnosis
    _sub(serial, "target", type="isa-serial", port="0")
    if win11:
        tpm = _sub(devices, "tpm", model="tpm-crb")
        _sub(tpm, "backend", type="emulator", version="2.0")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def volume_xml(spec: NewSpec) -> str:
    """The disk: qcow2 with lazy refcounts; created with metadata preallocation (a flag
    of the create call), as the guide's `qemu-img create -o
    preallocation=metadata,lazy_refcounts`."""
    vol = ET.Element("volume")
    _sub(vol, "name", spec.volume)
    _sub(vol, "capacity", str(spec.disk_gib), unit="GiB")
    target = _sub(vol, "target")
    _sub(target, "format", type="qcow2")
    _sub(target, "compat", "1.1")  # lazy_refcounts needs qcow2 version 3
    _sub(_sub(target, "features"), "lazy_refcounts")
    ET.indent(vol)
    return ET.tostring(vol, encoding="unicode") + "\n"


def secure_firmware(directory: Path = FIRMWARE_DIR) -> Path | None:
    """The descriptor of an x86_64 Q35 UEFI firmware with Secure Boot and Microsoft's keys
    enrolled, as libvirt's autoselection will find it; None when none is installed."""
    for path in sorted(directory.glob("*.json")):
        try:
            desc = json.loads(path.read_text())
            features = set(desc.get("features", []))
            targets = desc.get("targets", [])
        except (OSError, ValueError, AttributeError):
            continue
        if "uefi" in desc.get("interface-types", []) and features >= set(SECURE_FEATURES) \
                and any(t.get("architecture") == "x86_64" and any(
                    "q35" in m for m in t.get("machines", [])) for t in targets):
            return path
    return None


def check_host(spec: NewSpec, firmware_dir: Path = FIRMWARE_DIR,
               path: str | None = None) -> None:
    """Refuse, naming the packages, when the host lacks what the domain needs to start."""
    if spec.windows != "11":
        return
    if secure_firmware(firmware_dir) is None:
        raise Failed(f"No UEFI firmware with Secure Boot and Microsoft's keys is installed "
                     f"(libvirt looks for one in {firmware_dir}), and Windows 11 needs it: "
                     "install the ovmf package (apt install ovmf; edk2-ovmf on Fedora and "
                     "Arch), or use --windows 10.")
    missing = [p for p in ("swtpm", "swtpm_setup") if shutil.which(p, path=path) is None]
    if missing:
        raise Failed(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                     "installed, and Windows 11 needs an emulated TPM 2.0: install the swtpm "
                     "and swtpm-tools packages (apt install swtpm swtpm-tools; swtpm and "
                     "swtpm-tools on Fedora, swtpm on Arch), or use --windows 10.")


# NewSpec's fields as gvt-client new names them, for refusals a person reads
FLAGS = {"memory_mib": "--memory, in MiB", "vcpus": "--vcpus", "disk_gib": "--disk-size, in GiB",
         "windows": "--windows", "pool": "--pool", "network": "--network",
         "virt_type": "--virt-type", "name": "the VM's name"}


def spec_from(data: dict[str, object]) -> NewSpec:
    """The spec from NewDomain's options, with pydantic's complaint as one sentence."""
    from pydantic import ValidationError

    try:
        return NewSpec(**data)  # type: ignore[arg-type]
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "options"
        where = f"{where} ({FLAGS[where]})" if where in FLAGS else where
        raise InvalidArgument(f"{where}: {err['msg'].removeprefix('Value error, ')}.") from None

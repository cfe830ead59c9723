"""gvt-client new: a Windows VM the guide's way, made by gvtd (NewDomain).

The ISOs are opened here, as the user, and passed open: gvtd makes libvirt read them as
root, so it takes a path only from a caller who shows it can read that file itself.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from dbus_fast import Variant

from gvtd import names
from gvtd.client.errors import ClientError

if TYPE_CHECKING:
    from gvtd.client.main import Client

HELP = "make a Windows VM ready to install: UEFI, TPM, disk, drivers, network and its vGPU"
EPILOG = f"""\
The VM gets what the guide sets by hand: Q35; for Windows 11 UEFI with Secure Boot and
Microsoft's keys, SMM and a TPM 2.0 (swtpm); Windows 10 keeps BIOS. A qcow2 disk in a
libvirt storage pool (preallocation=metadata, lazy_refcounts) on virtio-scsi with TRIM;
the Windows ISO and the virtio-win drivers as CD-ROMs; USB 3; the SPICE agent, webdav and
guest agent channels; QXL with SPICE listening nowhere; libvirt's NAT network (it works on
Wi-Fi); the host's CPU. Then its vGPU is defined (on-demand), attached and tuned as
`gvt-client attach` and `tune` do.

The virtio-win ISO (Windows needs its virtscsi driver to see the disk):
  {names.VIRTIO_WIN_URL}

examples:
  gvt-client new win11 --iso ~/Downloads/Win11_English_x64.iso --virtio-win ~/Downloads/virtio-win.iso --dry-run
  gvt-client new win11 --iso /var/lib/libvirt/images/Win11.iso --virtio-win /var/lib/libvirt/images/virtio-win.iso
  gvt-client new win10 --windows 10 --iso Win10.iso --virtio-win virtio-win.iso --memory 4096
then: gvt-client start win11; gvt-client view win11
"""


def _count(text: str) -> int:
    """A whole number from 1 up (sent as D-Bus u)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 up")
    return value


def add_parser(add: Any) -> None:
    s = add("new", HELP, cmd_new)
    s.epilog = EPILOG
    s.formatter_class = argparse.RawDescriptionHelpFormatter
    s.add_argument("name", help="the VM's name (libvirt's domain, its disk NAME.qcow2, its vGPU)")
    s.add_argument("--iso", required=True, metavar="PATH", help="the Windows installation ISO")
    s.add_argument("--virtio-win", metavar="PATH",
                   help=f"the virtio-win driver ISO (default {names.VIRTIO_WIN_DEFAULT} when it "
                        "exists)")
    s.add_argument("--windows", choices=["11", "10"], default="11",
                   help="11 (default: UEFI, Secure Boot, TPM 2.0) or 10 (BIOS, as the guide)")
    s.add_argument("--memory", type=_count, default=8192, metavar="MIB",
                   help="memory in MiB (default 8192)")
    s.add_argument("--vcpus", type=_count, metavar="N",
                   help="vCPUs (default: every host thread outside CPU 0's core, as `tune`)")
    s.add_argument("--disk-size", type=_count, default=64, metavar="GIB",
                   help="the disk's size in GiB (default 64; it grows as Windows writes)")
    s.add_argument("--pool", default="default",
                   help="the libvirt storage pool the disk is made in (default: default)")
    s.add_argument("--network", default="default",
                   help="the libvirt network (default: default, libvirt's NAT)")
    s.add_argument("--min-resolution", metavar="WxH",
                   help="the vGPU: the smallest GVT-g type with this resolution (default "
                        "1920x1200; an SR-IOV GPU's VF has none)")
    s.add_argument("--no-vgpu", dest="vgpu", action="store_false",
                   help="no vGPU (add one later with `define` and `attach`)")
    s.add_argument("--no-audio", dest="audio", action="store_false",
                   help="no sound card; by default the VM's sound plays on your session's "
                        "PulseAudio, opened to QEMU's user alone when the VM starts")
    s.add_argument("--no-pinning", dest="pinning", action="store_false",
                   help="no vCPU pinning (see `tune --no-pinning`)")
    s.add_argument("--virt-type", choices=["kvm", "qemu"], default="kvm",
                   help="kvm (default) or qemu: emulation (TCG), very slow, for a host "
                        "without KVM")
    s.add_argument("--allow-unsupported-cpu", action="store_true",
                   help="make a Windows 11 VM on a CPU Windows 11 does not accept; you then "
                        "bypass Setup's check yourself")
    s.add_argument("--dry-run", action="store_true",
                   help="print the disk volume and domain XML it would make; make nothing")


def _open(path: str, what: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ClientError(f"Cannot read the {what} {path}: {e.strerror}. Give the path of a "
                          "file you can read.") from None


def _virtio_win(args: argparse.Namespace) -> str:
    if args.virtio_win:
        return str(args.virtio_win)
    if os.path.exists(names.VIRTIO_WIN_DEFAULT):
        return names.VIRTIO_WIN_DEFAULT
    raise ClientError("Windows cannot see the virtio-scsi disk without the virtio-win "
                      f"drivers: download virtio-win.iso from {names.VIRTIO_WIN_URL} and give "
                      "it with --virtio-win PATH. Nothing was made.")


async def cmd_new(c: Client, args: argparse.Namespace) -> None:
    iso, drivers = os.path.abspath(args.iso), os.path.abspath(_virtio_win(args))
    opts: dict[str, Variant] = {
        "iso": Variant("s", iso), "virtio_win": Variant("s", drivers),
        "windows": Variant("s", args.windows), "memory_mib": Variant("u", args.memory),
        "disk_gib": Variant("u", args.disk_size), "pool": Variant("s", args.pool),
        "network": Variant("s", args.network), "virt_type": Variant("s", args.virt_type),
        "vgpu": Variant("b", args.vgpu),
        "audio": Variant("b", args.audio),
        "pinning": Variant("b", args.pinning), "dry_run": Variant("b", args.dry_run),
        "allow_unsupported_cpu": Variant("b", args.allow_unsupported_cpu)}
    if args.vcpus is not None:
        opts["vcpus"] = Variant("u", args.vcpus)
    if args.min_resolution is not None:
        opts["min_resolution"] = Variant("s", args.min_resolution)
    fds = [_open(iso, "ISO"), _open(drivers, "virtio-win ISO")]
    try:
        (xml,) = await c.call("NewDomain", "shha{sv}", [args.name, 0, 1, opts], fds=fds)
    finally:
        for fd in fds:
            os.close(fd)
    if args.dry_run:
        print(xml, end="")
        return
    print(f"Made {args.name}: Windows {args.windows}, its {args.disk_size} GiB disk "
          f"{args.name}.qcow2 in pool {args.pool}"
          + (", its vGPU (on-demand, attached with SPICE GL)" if args.vgpu else "") + ".\n"
          f"Next: gvt-client start {args.name}; gvt-client view {args.name} (press a key when "
          "the firmware asks, to boot the installer).")

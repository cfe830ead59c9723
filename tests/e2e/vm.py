#!/usr/bin/python3
"""The end-to-end VM: a Debian 13 image with gvtd's package, the kernel's sample mdev
drivers and the scenario under tests/e2e/guest, booted with QEMU on a machine with an
IOMMU and an SR-IOV capable PCI device (QEMU's NVMe controller).

Everything is built from Debian's archive and cached under .cache/ by what went into it:
the image's root (debroot._tarball: suite and package list), the sample drivers (the guest
kernel's ABI and version, the Kbuild recipe), the .deb (debroot.package: the sources), and
the disk image (all of those plus the guest files). A run copies the cached disk, so every
run starts from the same fresh system. Needs root (mmdebstrap, chroot, mke2fs -d).

    tests/e2e/vm.py          # build what is missing, boot, print where the results are
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(TOP / "packaging"))
import debroot  # noqa: E402

CACHE = TOP / ".cache" / "e2e"
GUEST = Path(__file__).resolve().parent / "guest"
LAST_RUN = CACHE / "last-run"

# What the image holds besides the package's own Depends: systemd as PID 1, udev, the
# system bus, kmod for the sample drivers, passwd for the unprivileged users, the kernel.
IMAGE_PACKAGES = ["systemd", "systemd-sysv", "udev", "dbus", "kmod", "passwd", "python3",
                  "linux-image-amd64", "initramfs-tools"]
SAMPLES = ["mtty.c", "mdpy.c", "mdpy-defs.h", "mbochs.c"]
# Our own build recipe for the three samples (Kbuild syntax; the kernel's own Makefile
# there depends on CONFIG_SAMPLE_* options a distribution kernel does not set), and for
# guest/gvtd_e2e_gvt.c: GVT-g's kernel log messages and vgpu ids, from the kernel itself.
KBUILD = "obj-m := mtty.o mdpy.o mbochs.o gvtd_e2e_gvt.o\n"
GVT_MODULE = "gvtd_e2e_gvt.c"


@dataclass(frozen=True)
class Kernel:
    abi: str  # e.g. 6.12.117+deb13-amd64: uname -r, the suffix of the package names
    version: str  # the Debian version of linux-image-<abi>, e.g. 6.12.117-1

    @property
    def source_package(self) -> str:
        return "linux-source-" + ".".join(self.version.split(".")[:2])


def base() -> Path:
    """The cached root tarball: IMAGE_PACKAGES and what the .deb depends on."""
    depends = [d for d in debroot.control_field("Depends") if d != "dbus-system-bus"]
    return debroot._tarball("minbase", IMAGE_PACKAGES + depends)


def kernel_of(tarball: Path) -> Kernel:
    """The stock kernel apt installed into the root (whatever Debian ships today)."""
    status = subprocess.run(["tar", "-xOf", str(tarball), "./var/lib/dpkg/status"], check=True,
                            capture_output=True, text=True).stdout
    for block in status.split("\n\n"):
        m = re.search(r"^Package: linux-image-(\d\S*)$", block, re.M)
        v = re.search(r"^Version: (\S+)$", block, re.M)
        if m and v:
            return Kernel(m.group(1), v.group(1))
    raise RuntimeError(f"no linux-image-<abi> package in {tarball}")


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def samples(kernel: Kernel) -> Path:
    """mtty.ko, mdpy.ko and mbochs.ko for the guest kernel: the sources from Debian's
    linux-source package of the same version, built out of tree against its
    linux-headers package in a build root."""
    ours = (Path(__file__).resolve().parent / "guest" / GVT_MODULE).read_bytes()
    out = CACHE / f"samples-{kernel.abi}-{_digest(kernel.version, KBUILD, *SAMPLES, ours)}"
    if out.exists():
        return out
    root_tar = debroot._tarball("minbase", [
        "make", "xz-utils", f"linux-headers-{kernel.abi}",
        f"{kernel.source_package}={kernel.version}"])
    work = Path(tempfile.mkdtemp(prefix="samples-", dir=_mkdir(CACHE)))
    try:
        root = debroot.extract(root_tar, work / "root")
        (root / "build").mkdir()
        (root / "build/Kbuild").write_text(KBUILD)
        (root / "build" / GVT_MODULE).write_bytes(ours)
        members = " ".join(f"{kernel.source_package}/samples/vfio-mdev/{f}" for f in SAMPLES)
        debroot.run_in(root, f"""cd /build
            tar -xJf /usr/src/{kernel.source_package}.tar.xz --strip-components=3 {members}
            make -s -C /usr/src/linux-headers-{kernel.abi} M=/build modules""")
        made = work / "out"
        made.mkdir()
        for f in [*SAMPLES, "mtty.ko", "mdpy.ko", "mbochs.ko", "gvtd_e2e_gvt.ko"]:
            shutil.copy2(root / "build" / f, made / f)
        made.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _guest_files() -> list[Path]:
    return sorted(p for p in GUEST.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


# Set up inside the image root: the package, the drivers loaded at boot, three unprivileged
# users (carol in group libvirt, which the guest has without libvirt), a persistent
# journal, the scenario as a oneshot unit after gvtd.
SETUP = """
dpkg -i /tmp/{deb} >/tmp/dpkg.log 2>&1 || {{ cat /tmp/dpkg.log >&2; exit 1; }}
rm /tmp/{deb}
install -d /usr/lib/modules/{abi}/updates/vfio-mdev
mv /tmp/samples/*.ko /usr/lib/modules/{abi}/updates/vfio-mdev/
rm -r /tmp/samples
depmod -a {abi}
printf 'mtty\\nmdpy\\nmbochs\\ngvtd_e2e_gvt\\nvfio-pci\\n' > /etc/modules-load.d/gvtd-e2e.conf
useradd -m -u 1000 -s /bin/sh alice
useradd -m -u 1001 -s /bin/sh bob
getent group libvirt >/dev/null || groupadd -r libvirt
useradd -m -u 1002 -G libvirt -s /bin/sh carol
echo e2e > /etc/hostname
echo '/dev/vda / ext4 rw 0 0' > /etc/fstab
install -d -m 2755 -g systemd-journal /var/log/journal
install -d /usr/local/lib/gvtd-e2e
mv /tmp/guest/scenario.py /usr/local/lib/gvtd-e2e/
mv /tmp/guest/gvtd-e2e.service /etc/systemd/system/
mv /tmp/guest/50-gvtd-e2e.rules /tmp/guest/50-gvtd-alice.rules /etc/polkit-1/rules.d/
install -D -m 0644 /tmp/guest/gvtd-samples.conf /etc/systemd/system/gvtd.service.d/50-samples.conf
install -D -m 0644 /tmp/guest/gvtd-sriov.conf /etc/systemd/system/gvtd.service.d/50-sriov.conf
ln -s /etc/systemd/system/gvtd-e2e.service /etc/systemd/system/multi-user.target.wants/
rm -rf /tmp/guest /etc/resolv.conf
"""


def image(deb: Path) -> Path:
    """A directory with disk.img (ext4, the whole root), vmlinuz and initrd.img."""
    tar = base()
    kernel = kernel_of(tar)
    mods = samples(kernel)
    key = _digest(tar.name, mods.name, deb.read_bytes(), SETUP,
                  *(p.name.encode() + p.read_bytes() for p in _guest_files()))
    out = CACHE / f"image-{key}"
    if out.exists():
        return out
    work = Path(tempfile.mkdtemp(prefix="image-tmp", dir=_mkdir(CACHE)))
    try:
        root = debroot.extract(tar, work / "root")
        shutil.copy2(deb, root / "tmp" / deb.name)
        shutil.copytree(mods, root / "tmp/samples")
        shutil.copytree(GUEST, root / "tmp/guest",
                        ignore=shutil.ignore_patterns("__pycache__"))
        debroot.run_in(root, SETUP.format(deb=deb.name, abi=kernel.abi))
        made = _mkdir(work / "out")
        shutil.copy2(root / f"boot/vmlinuz-{kernel.abi}", made / "vmlinuz")
        shutil.copy2(root / f"boot/initrd.img-{kernel.abi}", made / "initrd.img")
        used = int(subprocess.run(["du", "-sbx", str(root)], check=True, capture_output=True,
                                  text=True).stdout.split()[0])
        size_mb = used * 13 // 10 // 2**20 + 256
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "e2e", "-d", str(root),
                        str(made / "disk.img"), f"{size_mb}M"], check=True, capture_output=True)
        made.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in CACHE.glob("image-*"):  # one disk image is kept: the newest
        if old != out and not old.name.startswith("image-tmp"):
            shutil.rmtree(old, ignore_errors=True)
    return out


# A q35 machine with an emulated VT-d IOMMU (the guest's intel_iommu=on gives each VF its
# own IOMMU group, which vfio-pci needs) and QEMU's NVMe controller as an SR-IOV physical
# function behind a PCIe root port: the guest's stock nvme driver enables its VFs through
# the kernel's PCI SR-IOV core (sriov_numvfs). Interrupt remapping (intremap) wants the
# split irqchip; caching-mode is what lets VFIO use the emulated IOMMU. The PF is at
# 0000:01:00.0 (bus 1: the root port's), its VFs at 0000:01:00.1 and .2.
SRIOV_MAX_VFS = 2
MACHINE = ["-machine", "q35,kernel-irqchip=split",
           "-device", "intel-iommu,intremap=on,caching-mode=on",
           "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1,addr=0x3",
           "-device", "nvme-subsys,id=ss0",
           "-device", f"nvme,serial=gvtd-e2e,subsys=ss0,sriov_max_vfs={SRIOV_MAX_VFS},"
                      "sriov_vq_flexible=4,sriov_vi_flexible=2,bus=rp1"]
# The disk stays at 0000:00:02.0, the iGPU's address the unit opens, as it was on the pc
# machine: the sandbox step checks the unit's rules on the device there.
DISK_SLOT = "0x2"


def accel() -> list[str]:
    """KVM where a hardware KVM module is loaded; TCG otherwise (a software /dev/kvm, as
    on these machines, boots QEMU but hangs a stock guest kernel)."""
    if any(Path(f"/sys/module/{m}").exists() for m in ("kvm_intel", "kvm_amd")):
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


@dataclass
class Run:
    dir: Path
    returncode: int | None  # None: killed at the time limit
    results: list[dict]

    def log_paths(self) -> str:
        return (f"console: {self.dir / 'console.log'}, journal: {self.dir / 'journal.txt'}, "
                f"results: {self.dir / 'results.jsonl'}, qemu: {self.dir / 'qemu.log'}")


def boot(img: Path, run_dir: Path, timeout: float = 600) -> Run:
    """Boot a copy of the image until the guest powers off (it reboots once on the way);
    collect the results it wrote to its second serial port, and its journal."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    disk = run_dir / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(img / "disk.img"), str(disk)], check=True)
    cmd = ["qemu-system-x86_64", *accel(), "-smp", "2", "-m", "1536", "-nodefaults",
           "-no-user-config", "-display", "none", "-nic", "none", *MACHINE,
           "-kernel", str(img / "vmlinuz"), "-initrd", str(img / "initrd.img"),
           "-append", "root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=auto "
                      "intel_iommu=on",
           "-drive", f"file={disk},format=raw,if=none,id=disk,cache=unsafe",
           "-device", f"virtio-blk-pci,drive=disk,addr={DISK_SLOT}",
           "-serial", f"file:{run_dir / 'console.log'}",
           "-serial", f"file:{run_dir / 'results.jsonl'}"]
    with open(run_dir / "qemu.log", "w") as log:
        try:
            rc: int | None = subprocess.run(cmd, timeout=timeout, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT).returncode
        except subprocess.TimeoutExpired:
            rc = None
    results = []
    out = run_dir / "results.jsonl"
    for line in (out.read_text(errors="replace") if out.exists() else "").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                results.append(json.loads(line))
            except ValueError:
                pass
    _journal(disk, run_dir)
    disk.unlink()
    return Run(run_dir, rc, results)


def _journal(disk: Path, run_dir: Path) -> None:
    """The guest's persistent journal, read out of its disk and rendered as text."""
    out = run_dir / "journal"
    out.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump /var/log/journal {out}", str(disk)],
                   capture_output=True)
    with open(run_dir / "journal.txt", "w") as f:
        subprocess.run(["journalctl", "--no-pager", "-o", "short-monotonic",
                        "-D", str(out / "journal")],
                       stdout=f, stderr=subprocess.STDOUT)


def run(timeout: float = 600) -> Run:
    deb = next(debroot.package().glob("*.deb"))
    return boot(image(deb), LAST_RUN, timeout)


def main() -> int:
    if os.geteuid() != 0:
        print("must run as root (mmdebstrap --mode=root, chroot, mke2fs -d)", file=sys.stderr)
        return 2
    r = run()
    print(json.dumps(r.results, indent=1))
    print(r.log_paths())
    return 0 if r.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""`gvt-client setup` against the real boot tools in a throw-away root.

Each root is a directory with this machine's /usr (read-only), /dev, /proc and /sys bound
into it inside a private mount namespace (`unshare -m`), so GRUB's own update-grub and
grub-mkconfig, and systemd's kernel-install, run chrooted into it exactly as on a host; the
root's proc/cmdline is a file of the test's, bound over the real one, so that what setup
reads as the running kernel's command line is the test's. Nothing outside the root is
touched: the mounts end with the namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gvtd import doctor, doctor_sriov
from gvtd.sim import demo
from harness import DBusDaemon, Simulation

CLIENT = str(Path(sys.executable).parent / "gvt-client")
FAKE_GRUBBY = Path(__file__).parents[1] / "fixtures" / "grubby"
KVER = "6.1.0-18-amd64"
PROC_CMDLINE = f"BOOT_IMAGE=/boot/vmlinuz-{KVER} root=/dev/sda1 ro quiet\n"
MACHINE_ID = "5c0ffee0d15ea5e5b0a710ad1e6a7e55"
NOBODY = 65534
# Binds this machine's tools into the root, then runs the command; the root's own
# proc/cmdline file (beside proc, as "cmdline") is shown as /proc/cmdline.
NAMESPACE = """set -e
T=$1; shift
for d in usr dev proc sys; do mkdir -p "$T/$d"; done
mount --bind /usr "$T/usr"; mount -o remount,bind,ro "$T/usr"
mount --rbind /dev "$T/dev"; mount --rbind /proc "$T/proc"; mount --rbind /sys "$T/sys"
[ -f "$T/cmdline" ] && mount --bind "$T/cmdline" "$T/proc/cmdline"
[ -f "$T/binds" ] && while read -r from to; do mount --bind "$from" "$T$to"; done <"$T/binds"
exec "$@"
"""


def in_root(root: Path, *argv: str, uid: int = 0) -> subprocess.CompletedProcess[str]:
    """argv in a private mount namespace where root has this machine's tools (and the
    files named in root/binds, "FROM TO" a line, in place of the tools at TO)."""
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid else []
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           NAMESPACE, "sh", str(root), *prefix, *argv],
                          capture_output=True, text=True, timeout=120)


def setup(root: Path, *args: str, uid: int = 0) -> subprocess.CompletedProcess[str]:
    p = in_root(root, CLIENT, "setup", "--root", str(root), *args, uid=uid)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file, link and directory the root holds outside the bound mount points."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel in ("usr", "dev", "proc", "sys"):
            dirs.clear()
            continue
        for d in dirs:
            out[os.path.join(rel, d)] = "dir"
        for f in files:
            path = os.path.join(dirpath, f)
            out[os.path.join(rel, f)] = (f"-> {os.readlink(path)}" if os.path.islink(path)
                                         else Path(path).read_bytes())
    return out


@pytest.fixture
def tree() -> Iterator[Path]:
    """An empty root that any user may read (for the dry run as nobody)."""
    path = Path(tempfile.mkdtemp(prefix="gvtd-setup."))
    path.chmod(0o755)
    for name, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                         ("lib64", "usr/lib64")):
        (path / name).symlink_to(target)
    (path / "cmdline").write_text(PROC_CMDLINE)
    (path / "tmp").mkdir(mode=0o1777)
    for mount_point in ("usr", "dev", "proc", "sys"):
        (path / mount_point).mkdir()
    yield path
    shutil.rmtree(path)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def debian_grub(root: Path, cmdline_default: str = "quiet") -> Path:
    """A Debian host booting with GRUB, its grub.cfg made by its own update-grub."""
    shutil.copytree("/etc/grub.d", root / "etc/grub.d", symlinks=True)
    grub = Path("/usr/share/grub/default/grub").read_text().replace(
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"', f'GRUB_CMDLINE_LINUX_DEFAULT="{cmdline_default}"')
    write(root / "etc/default/grub", grub)
    write(root / "etc/default/grub.d/init-select.cfg", "# Debian's\n")
    write(root / f"boot/vmlinuz-{KVER}", "a kernel\n")
    write(root / f"boot/initrd.img-{KVER}", "an initrd\n")
    (root / "boot/grub").mkdir()
    p = in_root(root, "chroot", str(root), "grub-mkconfig", "-o", "/boot/grub/grub.cfg")
    assert p.returncode == 0, p.stderr
    return root / "boot/grub/grub.cfg"


def linux_lines(grub_cfg: Path) -> list[str]:
    return [line.split(None, 2)[2] for line in grub_cfg.read_text().splitlines()
            if line.strip().startswith("linux\t") or line.strip().startswith("linux ")]


def test_grub_real_mkconfig_gets_the_parameters_and_revert_restores_every_byte(
        tree: Path) -> None:
    cfg = debian_grub(tree, "quiet i915.enable_guc=3")
    before = snapshot(tree)

    dry = setup(tree, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "+++ /etc/default/grub.d/zz-gvtd.cfg" in dry.stdout
    assert ('+GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT i915.enable_gvt=1 '
            'kvm.ignore_msrs=1 intel_iommu=on i915.enable_guc=0"') in dry.stdout
    assert "+++ /etc/modules-load.d/gvtd.conf" in dry.stdout and "+kvmgt\n" in dry.stdout
    assert f"  chroot {tree} update-grub\n" in dry.stdout
    assert "i915.enable_guc=3 in /etc/default/grub" in dry.stdout
    assert "No initramfs change is needed" in dry.stdout
    assert snapshot(tree) == before

    done = setup(tree)
    assert done.returncode == 0, done.stderr
    default, *_, recovery = linux_lines(cfg)
    assert default.endswith("quiet i915.enable_guc=3 i915.enable_gvt=1 kvm.ignore_msrs=1 "
                            "intel_iommu=on i915.enable_guc=0"), default
    assert "i915" not in recovery  # recovery mode keeps the plain line
    assert all(c.severity == "pass" for c in doctor.check_cmdline(default))
    assert (tree / "etc/default/grub").read_bytes() == before["etc/default/grub"]
    assert (tree / "etc/modules-load.d/gvtd.conf").read_text().splitlines()[-3:] == \
        ["kvmgt", "mdev", "vfio_iommu_type1"]
    assert "A reboot is needed" in done.stdout and "cmdline.guc" in done.stdout

    again = setup(tree)
    assert again.returncode == 0 and "Nothing to change" in again.stdout
    back = setup(tree, "--revert")
    assert back.returncode == 0, back.stderr
    assert snapshot(tree) == before  # grub.cfg too: update-grub made it again from the same
    assert "setup has not changed this system" in setup(tree, "--revert").stdout


def test_grub_without_drop_ins_gets_lines_appended_to_etc_default_grub(tree: Path) -> None:
    """Upstream grub-mkconfig (Arch, openSUSE) reads no /etc/default/grub.d, and there is no
    update-grub: Debian's grub-mkconfig without its drop-in loop, and update-grub hidden."""
    upstream = tree / "grub-mkconfig"
    text = Path("/usr/sbin/grub-mkconfig").read_text()
    start = text.index("for x in ${sysconfdir}/default/grub.d/*.cfg")
    upstream.write_text(text[:start] + text[text.index("done\n", start) + 5:])
    upstream.chmod(0o755)
    (tree / "binds").write_text(f"{upstream} /usr/sbin/grub-mkconfig\n"
                                "/dev/null /usr/sbin/update-grub\n")
    cfg = debian_grub(tree, "quiet i915.enable_guc=3")  # made by grub-mkconfig itself
    original = (tree / "etc/default/grub").read_bytes()
    before = snapshot(tree)
    dry = setup(tree, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "reads no /etc/default/grub.d" in dry.stdout
    assert "+++ /etc/default/grub" in dry.stdout and "zz-gvtd" not in dry.stdout
    assert f"  chroot {tree} grub-mkconfig -o /boot/grub/grub.cfg\n" in dry.stdout
    assert setup(tree).returncode == 0
    grub = (tree / "etc/default/grub").read_bytes()
    assert grub.startswith(original) and b"i915.enable_guc=0" in grub[len(original):]
    assert linux_lines(cfg)[0].endswith("i915.enable_guc=3 i915.enable_gvt=1 "
                                        "kvm.ignore_msrs=1 intel_iommu=on i915.enable_guc=0")
    assert setup(tree, "--revert").returncode == 0
    assert snapshot(tree) == before


def test_grub_setup_keeps_what_the_host_already_has(tree: Path) -> None:
    debian_grub(tree, "quiet intel_iommu=on,igfx_off i915.enable_gvt=1")
    write(tree / "etc/modules", "# /etc/modules\nkvmgt\n")
    dry = setup(tree, "--dry-run")
    assert dry.returncode == 0
    assert '$GRUB_CMDLINE_LINUX_DEFAULT kvm.ignore_msrs=1 i915.enable_guc=0"' in dry.stdout
    assert "+kvmgt" not in dry.stdout and "+mdev\n+vfio_iommu_type1\n" in dry.stdout


def test_grub_drop_in_that_clobbers_the_line_is_refused(tree: Path) -> None:
    debian_grub(tree)
    write(tree / "etc/default/grub.d/zzz-cloud.cfg", 'GRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0"\n')
    before = snapshot(tree)
    p = setup(tree)
    assert p.returncode == 1
    assert "/etc/default/grub.d" in p.stderr and "Nothing was written" in p.stderr
    assert snapshot(tree) == before


def test_broken_grub_config_is_an_error_and_nothing_is_written(tree: Path) -> None:
    debian_grub(tree)
    write(tree / "etc/default/grub", 'GRUB_CMDLINE_LINUX_DEFAULT="quiet\nif then\n')
    before = snapshot(tree)
    p = setup(tree)
    assert p.returncode == 1 and p.stderr.startswith("gvt-client: ")
    assert "does not run as a shell script" in p.stderr and "Nothing was written" in p.stderr
    assert snapshot(tree) == before


def test_a_failing_update_grub_puts_every_file_back(tree: Path) -> None:
    debian_grub(tree)
    shutil.rmtree(tree / "boot/grub")  # grub-mkconfig cannot write grub.cfg
    before = snapshot(tree)
    p = setup(tree)
    assert p.returncode == 1
    assert "update-grub` failed" in p.stderr and "put every file back" in p.stderr
    assert snapshot(tree) == before


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_a_setup_killed_at_any_write_is_reverted_exactly(tree: Path, nth: int) -> None:
    """SIGKILL at setup's nth rename (strace's fault injection): its record's, the GRUB
    drop-in's, the modules file's. /var/lib/gvtd is there, as on a host where gvtd has run."""
    debian_grub(tree)
    (tree / "var/lib/gvtd").mkdir(parents=True)
    before = snapshot(tree)
    killed = in_root(tree, "strace", "-o", "/dev/null", "-e", "trace=rename", "-e",
                     f"inject=rename:signal=KILL:when={nth}", CLIENT, "setup", "--root",
                     str(tree))
    assert killed.returncode in (-9, 137), killed
    back = setup(tree, "--revert")
    assert back.returncode == 0, back.stderr
    assert snapshot(tree) == before
    assert setup(tree).returncode == 0  # and setup works again from there


ALDER_LAKE_PF = "0000:00:02.0"
DROPIN = "etc/systemd/system/gvtd.service.d/sriov.conf"


def alder_lake(root: Path, bridge: str = "") -> Path:
    """The root's /sys (bound over the real one) is an Alder Lake-P laptop's (8086:46a6) on
    the stock i915, whose PF has 7 VFs but no max_vfs parameter: the i915 SR-IOV module is
    still to be installed. bridge: the PCI bridge the PF is behind, when not on the root bus."""
    sys_dir = root / "fakesys"
    address = f"{bridge[:5]}01:00.0" if bridge else ALDER_LAKE_PF
    parent = sys_dir / "devices/pci0000:00" / bridge
    for name, text in (("vendor", "0x8086"), ("device", "0x46a6"), ("class", "0x030000"),
                       ("sriov_totalvfs", "7"), ("sriov_numvfs", "0")):
        write(parent / address / name, text + "\n")
    (sys_dir / "bus/pci/devices").mkdir(parents=True)
    (sys_dir / "bus/pci/devices" / address).symlink_to(
        os.path.relpath(parent / address, sys_dir / "bus/pci/devices"))
    (sys_dir / "bus/pci/drivers/i915").mkdir(parents=True)
    (parent / address / "driver").symlink_to("../../../bus/pci/drivers/i915")
    write(sys_dir / "module/i915/parameters/enable_guc", "-1\n")
    with (root / "binds").open("a") as binds:
        binds.write(f"{sys_dir} /sys\n")
    return parent / address


def sriov_findings(root: Path, pf: Path, line: str) -> dict[str, str]:
    """doctor on the root after the reboot with line: i915 not bound yet (the SR-IOV
    module is to be installed), the line in /proc/cmdline."""
    (pf / "driver").unlink()
    shutil.rmtree(root / "fakesys/module/i915")
    write(root / "checkproc/cmdline", line + "\n")
    roots = doctor.HostRoots(sysfs=root / "fakesys", procfs=root / "checkproc",
                             kernel_log=None, root=root)
    return {c.id: c.severity for c in doctor.diagnose(roots)}


def test_sriov_grub_gets_the_sriov_line_vfio_and_the_drop_in_and_revert_restores_it(
        tree: Path) -> None:
    pf = alder_lake(tree)
    cfg = debian_grub(tree, "quiet i915.enable_gvt=1 i915.enable_guc=0")
    before = snapshot(tree)

    dry = setup(tree, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert ('+GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT intel_iommu=on '
            'i915.enable_guc=3 i915.max_vfs=7"') in dry.stdout
    assert "i915.enable_guc=0 in /etc/default/grub: the i915.enable_guc=3 after it wins" \
        in dry.stdout
    assert "i915.enable_gvt=1 in /etc/default/grub: GVT-g's" in dry.stdout
    assert f"note: {ALDER_LAKE_PF} runs i915 now, not the i915 SR-IOV module: install it" \
        in dry.stdout
    assert f"+++ /{DROPIN}\n" in dry.stdout and "+vfio-pci\n" in dry.stdout
    assert "+kvmgt" not in dry.stdout
    assert "systemctl daemon-reload`, or the reboot" in dry.stdout  # not the live system
    assert f"chroot {tree} systemctl" not in dry.stdout
    assert snapshot(tree) == before

    done = setup(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    default = linux_lines(cfg)[0]
    assert default.endswith("quiet i915.enable_gvt=1 i915.enable_guc=0 intel_iommu=on "
                            "i915.enable_guc=3 i915.max_vfs=7"), default
    assert (tree / "etc/modules-load.d/gvtd.conf").read_text().splitlines()[-1] == "vfio-pci"
    assert (tree / DROPIN).read_text().endswith(
        "[Service]\nReadWritePaths=-/sys/devices/pci0000:00\n")
    assert "cmdline.intel_iommu, sriov.guc, sriov.max_vfs, sriov.vfio as ok" in done.stdout
    assert setup(tree).stdout.endswith("Nothing to change: the next boot already gets what "
                                       "SR-IOV needs here.\n")

    back = setup(tree, "--revert")
    assert back.returncode == 0, back.stderr
    assert snapshot(tree) == before
    findings = sriov_findings(tree, pf, default)
    assert [findings[c] for c in ("cmdline.intel_iommu", "sriov.guc", "sriov.max_vfs")] == \
        ["pass"] * 3


def test_sriov_systemd_boot_and_a_pf_behind_a_bridge(tree: Path) -> None:
    alder_lake(tree, bridge="0000:00:01.0")
    entry = systemd_boot(tree)
    before = snapshot(tree)
    done = setup(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert options(entry) == ("root=/dev/sda1 ro quiet intel_iommu=on i915.enable_guc=3 "
                              f"i915.max_vfs=7 systemd.machine_id={MACHINE_ID}")
    assert (tree / DROPIN).read_text().endswith(
        "ReadWritePaths=-/sys/devices/pci0000:00/0000:00:01.0\n")
    assert setup(tree, "--revert").returncode == 0
    assert snapshot(tree) == before


def systemd_boot(root: Path) -> Path:
    """A host booting with systemd-boot: kernel-install writes its entries into /efi."""
    write(root / "etc/machine-id", MACHINE_ID + "\n")
    write(root / "etc/kernel/install.conf", "layout=bls\n")
    (root / "efi/loader/entries").mkdir(parents=True)
    write(root / f"boot/vmlinuz-{KVER}", "a kernel\n")
    write(root / f"boot/initrd.img-{KVER}", "an initrd\n")
    p = in_root(root, "chroot", str(root), "kernel-install", "add", KVER,
                f"/boot/vmlinuz-{KVER}", f"/boot/initrd.img-{KVER}")
    assert p.returncode == 0, p.stderr
    return root / f"efi/loader/entries/{MACHINE_ID}-{KVER}.conf"


def options(entry: Path) -> str:
    return next(line.split(None, 1)[1] for line in entry.read_text().splitlines()
                if line.startswith("options"))


def test_systemd_boot_kernel_install_layout_and_byte_exact_revert(tree: Path) -> None:
    entry = systemd_boot(tree)
    # from /proc/cmdline, as yet; kernel-install adds the machine id
    assert options(entry) == f"root=/dev/sda1 ro quiet systemd.machine_id={MACHINE_ID}"
    before = snapshot(tree)

    dry = setup(tree, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "systemd-boot" in dry.stdout and "+++ /etc/kernel/cmdline" in dry.stdout
    assert ("+root=/dev/sda1 ro quiet i915.enable_gvt=1 kvm.ignore_msrs=1 intel_iommu=on "
            "i915.enable_guc=0\n") in dry.stdout
    assert (f"  chroot {tree} kernel-install add {KVER} /boot/vmlinuz-{KVER} "
            f"/boot/initrd.img-{KVER}\n") in dry.stdout
    assert snapshot(tree) == before

    done = setup(tree)
    assert done.returncode == 0, done.stderr
    line = options(entry)
    assert line == ("root=/dev/sda1 ro quiet i915.enable_gvt=1 kvm.ignore_msrs=1 "
                    f"intel_iommu=on i915.enable_guc=0 systemd.machine_id={MACHINE_ID}")
    assert all(c.severity == "pass" for c in doctor.check_cmdline(line))
    assert (tree / f"efi/{MACHINE_ID}/{KVER}/linux").read_text() == "a kernel\n"

    back = setup(tree, "--revert")
    assert back.returncode == 0, back.stderr
    assert snapshot(tree) == before


def test_systemd_boot_edits_an_existing_kernel_cmdline_and_restores_it(tree: Path) -> None:
    entry = systemd_boot(tree)
    original = b"root=UUID=5b0a ro  quiet\ni915.enable_guc=3"  # two lines, no newline at end
    (tree / "etc/kernel/cmdline").write_bytes(original)
    p = setup(tree)
    assert p.returncode == 0, p.stderr
    assert options(entry) == ("root=UUID=5b0a ro quiet i915.enable_guc=3 i915.enable_gvt=1 "
                              "kvm.ignore_msrs=1 intel_iommu=on i915.enable_guc=0 "
                              f"systemd.machine_id={MACHINE_ID}")
    assert "i915.enable_guc=3 in /etc/kernel/cmdline" in p.stdout
    assert setup(tree, "--revert").returncode == 0
    assert (tree / "etc/kernel/cmdline").read_bytes() == original
    assert options(entry) == ("root=UUID=5b0a ro quiet i915.enable_guc=3 "
                              f"systemd.machine_id={MACHINE_ID}")


def test_grubby_updates_every_entry_and_revert_puts_the_old_values_back(tree: Path) -> None:
    """grubby is Fedora's and not in Debian: tests/fixtures/grubby stands in for it (the BLS
    entries, and grubby-bls's handling of --args and --remove-args)."""
    (tree / "sbin").unlink()
    (tree / "sbin").mkdir()
    shutil.copy(FAKE_GRUBBY, tree / "sbin/grubby")
    original = "root=/dev/sda1 ro rhgb quiet i915.enable_guc=3"
    for version in (KVER, "6.0.0-1-amd64"):
        write(tree / f"boot/loader/entries/{MACHINE_ID}-{version}.conf",
              f"title Fedora Linux ({version})\nversion {version}\n"
              f"linux /vmlinuz-{version}\noptions {original}\n")
    dry = setup(tree, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "kept by grubby" in dry.stdout
    assert (f"  chroot {tree} grubby --update-kernel=ALL '--args=i915.enable_gvt=1 "
            "kvm.ignore_msrs=1 intel_iommu=on i915.enable_guc=0'\n") in dry.stdout
    assert setup(tree).returncode == 0
    for entry in (tree / "boot/loader/entries").iterdir():
        line = options(entry)
        assert line == ("root=/dev/sda1 ro rhgb quiet i915.enable_gvt=1 kvm.ignore_msrs=1 "
                        "intel_iommu=on i915.enable_guc=0")
        assert all(c.severity == "pass" for c in doctor.check_cmdline(line))
    back = setup(tree, "--revert")
    assert back.returncode == 0, back.stderr
    for entry in (tree / "boot/loader/entries").iterdir():
        assert options(entry) == original  # grubby puts the old value back at the end
    assert not (tree / "var/lib/gvtd/setup.json").exists()


def test_revert_leaves_a_file_changed_since_alone(tree: Path) -> None:
    debian_grub(tree)
    assert setup(tree).returncode == 0
    dropin = tree / "etc/default/grub.d/zz-gvtd.cfg"
    dropin.write_text(dropin.read_text() + "# mine now\n")
    before = snapshot(tree)
    p = setup(tree, "--revert")
    assert p.returncode == 1 and "/etc/default/grub.d/zz-gvtd.cfg changed since" in p.stderr
    assert snapshot(tree) == before


def test_unknown_boot_setup_gets_the_exact_manual_step(tree: Path) -> None:
    (tree / "cmdline").write_text(PROC_CMDLINE.replace("quiet", "quiet i915.enable_guc=3"))
    before = snapshot(tree)
    dry = setup(tree, "--dry-run")
    assert dry.returncode == 1
    assert "cannot tell how this host boots" in dry.stdout
    assert ("To do by hand: Add these parameters to the kernel command line in your boot "
            "loader's configuration, then reboot: i915.enable_gvt=1 kvm.ignore_msrs=1 "
            "intel_iommu=on i915.enable_guc=0") in dry.stdout
    assert f"i915.enable_guc=3 in {tree}/proc/cmdline" in dry.stdout
    assert snapshot(tree) == before
    done = setup(tree)
    assert done.returncode == 1 and "left to you" in done.stdout
    assert (tree / "etc/modules-load.d/gvtd.conf").exists()  # the modules do not need it
    assert setup(tree, "--revert").returncode == 0
    assert snapshot(tree) == before


def test_only_root_changes_the_boot_configuration(tree: Path) -> None:
    debian_grub(tree)
    before = snapshot(tree)
    p = setup(tree, uid=NOBODY)
    assert p.returncode == 1 and "sudo gvt-client setup" in p.stderr
    assert p.stderr.count("\n") == 1
    dry = setup(tree, "--dry-run", uid=NOBODY)
    assert dry.returncode == 0, dry.stderr
    assert "+++ /etc/default/grub.d/zz-gvtd.cfg" in dry.stdout
    assert setup(tree, "--revert", uid=NOBODY).returncode == 1
    assert snapshot(tree) == before


def test_usage_errors_exit_2(tree: Path) -> None:
    p = subprocess.run([CLIENT, "setup", "--bogus"], capture_output=True, text=True)
    assert p.returncode == 2 and "usage:" in p.stderr
    assert "--revert" in subprocess.run([CLIENT, "setup", "--help"], capture_output=True,
                                        text=True, check=True).stdout


def test_the_demo_dry_run_reads_the_simulated_host(dbus: DBusDaemon,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`make demo`: setup on the laptop booted with enable_guc=3 adds only what fixes it."""
    sim = Simulation(dbus, "guc-enabled")
    try:
        demo.setup_demo(sim.env)
    finally:
        sim.stop()
    out = capsys.readouterr().out
    assert "fails doctor's cmdline.guc." in out
    assert '+GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT i915.enable_guc=0"' in out
    assert "i915.enable_guc=3 in /etc/default/grub" in out
    assert "+++ /etc/modules-load.d/gvtd.conf" not in out  # the guide's gvt.conf loads them

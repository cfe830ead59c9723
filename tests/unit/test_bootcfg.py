"""What setup adds to a kernel command line, and how it tells a host's boot tooling apart."""

import os
from pathlib import Path

import pytest

from gvtd import bootcfg, doctor

GUIDE = "i915.enable_gvt=1 kvm.ignore_msrs=1 intel_iommu=on i915.enable_guc=0"


@pytest.mark.parametrize("line, added", [
    ("root=/dev/sda1 ro quiet", GUIDE.split()),
    (f"root=/dev/sda1 ro quiet {GUIDE}", []),
    (f"quiet {GUIDE} i915.enable_guc=3", ["i915.enable_guc=0"]),
    ("intel_iommu=on,igfx_off i915.enable-gvt=1 kvm.ignore_msrs=Y i915.enable_guc=0", []),
    ("intel_iommu=off i915.enable_gvt=0", GUIDE.split()),
    (f"{GUIDE} i915.enable_guc_submission=1", ["i915.enable_guc=0",
                                              "i915.enable_guc_submission=0"]),
])
def test_additions_make_every_cmdline_check_pass(line: str, added: list[str]) -> None:
    assert doctor.cmdline_additions(line) == added
    after = f"{line} {' '.join(added)}"
    assert all(c.severity == "pass" for c in doctor.check_cmdline(after))


def test_the_guide_order_is_doctor_list() -> None:
    assert " ".join(p for _, p in doctor.REQUIRED_CMDLINE) == GUIDE
    assert {c.id for c in doctor.check_cmdline("")} == {i for i, _ in doctor.REQUIRED_CMDLINE}


def _tool(root: Path, path: str) -> None:
    f = root / path.lstrip("/")
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("#!/bin/sh\n")
    os.chmod(f, 0o755)


def test_detection(tmp_path: Path) -> None:
    root = bootcfg.Root(tmp_path)
    assert bootcfg.detect(root) == "unknown"
    (tmp_path / "etc/default").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_text("")
    assert bootcfg.detect(root) == "unknown"  # no grub-mkconfig: not a GRUB host
    _tool(tmp_path, "/usr/sbin/grub2-mkconfig")
    assert bootcfg.detect(root) == "grub"
    _tool(tmp_path, "/usr/bin/kernel-install")
    assert bootcfg.detect(root) == "grub"  # kernel-install alone says nothing
    (tmp_path / "usr/lib/kernel").mkdir(parents=True)
    (tmp_path / "usr/lib/kernel/install.conf").write_text("#layout=bls|other|...\n")
    assert bootcfg.detect(root) == "grub"  # systemd's own, commented out
    (tmp_path / "etc/kernel").mkdir()
    (tmp_path / "etc/kernel/install.conf").write_text("layout=bls\n")
    assert bootcfg.detect(root) == "systemd-boot"
    (tmp_path / "etc/kernel/install.conf").unlink()
    (tmp_path / "boot/efi/loader/entries").mkdir(parents=True)
    assert bootcfg.detect(root) == "systemd-boot"
    _tool(tmp_path, "/usr/sbin/grubby")
    assert bootcfg.detect(root) == "grubby"


def test_commands_run_chrooted_unless_the_root_is_slash(tmp_path: Path) -> None:
    assert bootcfg.Root(Path("/")).command(["update-grub"]) == ["update-grub"]
    assert bootcfg.Root(tmp_path).command(["update-grub"]) == ["chroot", str(tmp_path),
                                                               "update-grub"]


def test_grub_lines_are_read_as_grub_mkconfig_sources_them() -> None:
    line = bootcfg.grub_cmdline([b'GRUB_CMDLINE_LINUX="a"\nGRUB_CMDLINE_LINUX_DEFAULT="b"\n',
                                 b'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT c"\n'])
    assert line == "a b c"
    with pytest.raises(bootcfg.BootError, match="shell script"):
        bootcfg.grub_cmdline([b"if then\n"])


def test_modprobe_options_that_contradict_the_command_line_are_named(tmp_path: Path) -> None:
    conf = tmp_path / "etc/modprobe.d/i915.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("# GuC for the media engine\noptions i915 enable_guc=3 enable_fbc=1\n"
                    "options kvm ignore_msrs=1\noptions i915 enable-gvt=0 # off\n")
    notes = bootcfg.modprobe_notes(bootcfg.Root(tmp_path))
    assert [n.split(":")[0] for n in notes] == [
        "options i915 enable_guc=3 in /etc/modprobe.d/i915.conf",
        "options i915 enable-gvt=0 in /etc/modprobe.d/i915.conf"]
    assert "i915.enable_guc=0 wins" in notes[0]


def test_setup_help_names_doctor_parameters_and_modules() -> None:
    from gvtd.client.main import SETUP_EPILOG
    text = " ".join(SETUP_EPILOG.split())
    assert " ".join(p for _, p in doctor.REQUIRED_CMDLINE) in text
    assert ", ".join(m.load for m in doctor.REQUIRED_MODULES) in text


def test_only_the_client_changes_the_boot_configuration() -> None:
    """gvtd is root and every local user may call it: no daemon module may reach setup."""
    top = Path(__file__).resolve().parents[2] / "gvtd"
    users = sorted(str(p.relative_to(top)) for p in top.rglob("*.py")
                   if ("bootcfg" in p.read_text() or "client.setup" in p.read_text())
                   and p.name != "bootcfg.py")
    assert users == ["client/main.py", "client/setup.py"]


def test_modules_already_loaded_at_boot_are_not_added(tmp_path: Path) -> None:
    root = bootcfg.Root(tmp_path)
    (tmp_path / "etc/modules-load.d").mkdir(parents=True)
    (tmp_path / "etc/modules-load.d/virt.conf").write_text("# mine\nkvmgt\n")
    (tmp_path / "etc/modules").write_text("vfio-iommu-type1 # dashes count too\n")
    change, missing = bootcfg.modules_change(root, root.read)
    assert missing == ["mdev"]
    assert change is not None and change.then is not None
    assert change.then.decode().splitlines()[-1] == "mdev"
    old = tmp_path / "usr/lib/modules/5.10.0-9-amd64/kernel/drivers/vfio/mdev/vfio_mdev.ko"
    old.parent.mkdir(parents=True)
    old.write_text("")
    assert bootcfg.modules_change(root, root.read)[1] == ["mdev", "vfio_mdev"]
    (tmp_path / "etc/modules-load.d/virt.conf").write_text("kvmgt\nmdev\n")
    assert bootcfg.modules_change(root, root.read) == (None, [])

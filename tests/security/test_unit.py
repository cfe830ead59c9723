"""units/gvtd.service: valid for systemd, and sandboxed to an exposure of at most 2.5."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from harness import ROOT

UNIT = ROOT / "units" / "gvtd.service"
MAX_EXPOSURE = 2.5
GPU = "/sys/devices/pci0000:00/0000:00:02.0"  # the iGPU: GVT-g's only parent
# What binds a VF to vfio-pci, or takes it off the GPU driver that grabbed it: single files
# (gvtd.sriov writes nothing else outside the PF's directory but the VF's driver_override).
SRIOV_FILES = ["/sys/bus/pci/drivers_probe", "/sys/bus/pci/drivers/vfio-pci/unbind",
               "/sys/bus/pci/drivers/i915/unbind", "/sys/bus/pci/drivers/xe/unbind"]


def installed_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's gvtd entry point.

    `systemd-analyze verify` checks that ExecStart's binary exists; the shipped unit names
    /usr/bin/gvtd, which the packages install and a test machine does not have. The copy
    differs in that one line only.
    """
    gvtd = Path(sys.executable).parent / "gvtd"
    assert gvtd.exists(), "the gvtd entry point (pip install -e .)"
    text, count = re.subn(r"^ExecStart=/usr/bin/gvtd$", f"ExecStart={gvtd}",
                          UNIT.read_text(), flags=re.M)
    assert count == 1
    copy = tmp_path / "gvtd.service"
    copy.write_text(text)
    return copy


def test_unit_verifies(tmp_path: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "verify", str(installed_copy(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_unit_exposure(tmp_path: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                           str(installed_copy(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for gvtd.service: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    exposure = float(match.group(1))
    print(f"gvtd.service exposure: {exposure}")
    assert exposure <= MAX_EXPOSURE, proc.stdout


def unit_settings() -> dict[str, list[str]]:
    """Key -> its values in order, with systemd's line continuations joined."""
    text = re.sub(r"\\\n", " ", UNIT.read_text())
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value)
    return settings


def paths(settings: dict[str, list[str]], key: str) -> list[str]:
    return [p for value in settings.get(key, []) for p in value.split()]


def test_unit_keeps_what_gvtd_needs() -> None:
    """The sandbox must still let gvtd work: write mdev files, reach udev and the bus."""
    settings = unit_settings()
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["ProtectKernelTunables"] == ["yes"]
    assert f"-{GPU}" in paths(settings, "ReadWritePaths")
    assert "/etc/gvtd" in paths(settings, "ReadWritePaths")
    assert set(settings["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_NETLINK"}
    assert "PrivateNetwork" not in settings  # uevents reach only the host's namespace
    assert "PrivateUsers" not in settings  # sysfs files are root's
    assert settings["Type"] == ["notify"] and settings["BusName"] == ["io.github.gvtd1"]
    assert shutil.which("systemd-analyze")


def test_unit_writes_in_sys_only_below_the_gvt_g_parent() -> None:
    """What the unit lets gvtd write in /sys: the iGPU's directory (GVT-g's only parent),
    where its mdev files and its SR-IOV count are, and none of the GPU's own PCI and DRM
    files there; the PCI bus's drivers_probe and the unbind files of vfio-pci, i915 and xe,
    one by one (VFs). Every other root-writable file under /sys stays read-only
    (BindReadOnlyPaths=/sys)."""
    settings = unit_settings()
    writable = [p.lstrip("-") for p in paths(settings, "ReadWritePaths")]
    in_sys = [p for p in writable if p == "/sys" or p.startswith("/sys/")]
    assert in_sys == [GPU, *SRIOV_FILES], in_sys
    assert all(p.startswith("-") for p in paths(settings, "ReadWritePaths") if "/sys" in p), \
        "an iGPU-less host must start gvtd (a missing path without '-' fails the unit)"
    protected = paths(settings, "ReadOnlyPaths")
    # Under ProtectSystem=strict, neither ProtectKernelTunables= nor ReadOnlyPaths=/sys left
    # /sys read-only (seen on systemd 257): a read-only bind mount of /sys does
    assert settings["BindReadOnlyPaths"] == ["/sys", "-/tmp/.X11-unix"]  # and the X sockets
    for name in ("config", "resource0", "resource2", "rom", "remove", "reset", "rescan",
                 "driver_override", "power", "drm", "i2c-0"):
        assert f"-{GPU}/{name}" in protected, name
    for name in ("sriov_numvfs", "sriov_drivers_autoprobe"):  # the PF's: gvtd makes VFs
        assert f"-{GPU}/{name}" not in protected, name
    assert not [p for p in protected if not p.startswith(f"-{GPU}/")], protected
    # the mdev files stay writable: nothing re-protects mdev_supported_types or an mdev
    assert not [p for p in protected if "mdev" in p or re.search(r"/[0-9a-f]{8}-", p)]

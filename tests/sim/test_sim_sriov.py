"""The PCI SR-IOV core through FUSE and umockdev: layout, uevents in Linux's order, errnos
from real writes, drivers_probe, a PF's driver unbinding, reboot."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from conftest import HostProc, Monitor, write

PF = "/devices/pci0000:00/0000:00:02.0"


def vf(n: int) -> str:
    return f"/devices/pci0000:00/0000:00:02.{n}"


def brief(events: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [(e["action"], e["devpath"], e["subsystem"], e["props"].get("DRIVER", ""))
            for e in events]


@pytest.fixture
def sriov(make_host: Callable[..., HostProc]) -> HostProc:
    return make_host("alderlake-sriov")


@pytest.fixture
def events(sriov: HostProc) -> Any:
    m = Monitor(sriov)
    yield m
    m.close()


def test_pf_layout(sriov: HostProc) -> None:
    pf = sriov.sys(PF)
    files = {n: (pf / n).read_text() for n in ["sriov_totalvfs", "sriov_numvfs", "sriov_offset",
                                                "sriov_stride", "sriov_vf_device",
                                                "sriov_drivers_autoprobe", "vendor", "device",
                                                "class", "driver_override"]}
    assert files == {"sriov_totalvfs": "7\n", "sriov_numvfs": "0\n", "sriov_offset": "1\n",
                     "sriov_stride": "1\n", "sriov_vf_device": "46a6\n",
                     "sriov_drivers_autoprobe": "1\n", "vendor": "0x8086\n",
                     "device": "0x46a6\n", "class": "0x030000\n",
                     "driver_override": "(null)\n"}
    assert os.readlink(pf / "driver") == "../../../bus/pci/drivers/i915"
    assert os.readlink(pf / "iommu_group") == "../../../kernel/iommu_groups/0"
    assert sriov.sys("/bus/pci/devices/0000:00:02.0").resolve() == pf
    assert sriov.sys("/bus/pci/drivers/i915/0000:00:02.0").resolve() == pf
    assert sorted(os.listdir(sriov.sys("/bus/pci/drivers"))) == ["i915", "vfio-pci"]
    assert "DRIVER=i915\n" in (pf / "uevent").read_text()
    assert write(pf / "sriov_totalvfs", "3") == "EACCES"


def test_numvfs_with_autoprobe_off_adds_unbound_vfs_in_order(sriov: HostProc,
                                                            events: Monitor) -> None:
    pf = sriov.sys(PF)
    assert write(pf / "sriov_drivers_autoprobe", "0\n") == "ok"
    assert write(pf / "sriov_numvfs", "2\n") == "ok"
    # The write has returned: the VFs and their events are there.
    assert brief(events.events(5)) == [
        ("add", vf(1), "pci", ""), ("change", vf(1), "pci", ""),
        ("add", vf(2), "pci", ""), ("change", vf(2), "pci", ""),
        ("change", PF, "pci", "i915")]
    assert (pf / "sriov_numvfs").read_text() == "2\n"
    assert os.readlink(pf / "virtfn0") == "../0000:00:02.1"
    assert os.readlink(pf / "virtfn1") == "../0000:00:02.2"
    one = sriov.sys(vf(1))
    assert os.readlink(one / "physfn") == "../0000:00:02.0"
    assert not os.path.lexists(one / "driver")
    assert os.readlink(one / "iommu_group") == "../../../kernel/iommu_groups/14"
    assert sriov.sys("/kernel/iommu_groups/15/devices/0000:00:02.2").resolve() == sriov.sys(vf(2))
    assert (one / "uevent").read_text().startswith("PCI_CLASS=30000\nPCI_ID=8086:46A6\n")
    assert sriov.sys("/bus/pci/devices/0000:00:02.2").resolve() == sriov.sys(vf(2))
    assert os.listdir(sriov.sys("/bus/pci/drivers/i915")).count("0000:00:02.1") == 0

    assert write(pf / "sriov_numvfs", "0\n") == "ok"
    assert brief(events.events(2)) == [("remove", vf(1), "pci", ""), ("remove", vf(2), "pci", "")]
    assert not sriov.sys(vf(1)).exists() and not os.path.lexists(pf / "virtfn0")
    assert not os.path.lexists(sriov.sys("/bus/pci/devices/0000:00:02.1"))
    assert not sriov.sys("/kernel/iommu_groups/14").exists()


def test_numvfs_with_autoprobe_on_binds_each_vf_to_the_pf_driver(sriov: HostProc,
                                                                events: Monitor) -> None:
    pf = sriov.sys(PF)
    assert write(pf / "sriov_numvfs", "2") == "ok"
    assert brief(events.events(7)) == [
        ("add", vf(1), "pci", ""), ("change", vf(1), "pci", ""), ("bind", vf(1), "pci", "i915"),
        ("add", vf(2), "pci", ""), ("change", vf(2), "pci", ""), ("bind", vf(2), "pci", "i915"),
        ("change", PF, "pci", "i915")]
    assert sriov.sys("/bus/pci/drivers/i915/0000:00:02.2").resolve() == sriov.sys(vf(2))
    assert write(pf / "sriov_numvfs", "0") == "ok"
    assert brief(events.events(4)) == [
        ("unbind", vf(1), "pci", ""), ("remove", vf(1), "pci", ""),
        ("unbind", vf(2), "pci", ""), ("remove", vf(2), "pci", "")]


def test_override_and_drivers_probe_bind_to_vfio_pci(sriov: HostProc, events: Monitor) -> None:
    pf, one = sriov.sys(PF), sriov.sys(vf(1))
    assert write(pf / "sriov_drivers_autoprobe", "0") == "ok"
    assert write(pf / "sriov_numvfs", "1") == "ok"
    events.events(3)
    probe = sriov.sys("/bus/pci/drivers_probe")
    assert write(probe, "0000:00:02.1\n") == "ok"  # no override, autoprobe 0: nothing binds
    assert write(one / "driver_override", "nvme\n") == "ok"
    assert write(probe, "0000:00:02.1") == "ok"  # a driver that is not loaded: nothing
    assert not os.path.lexists(one / "driver")
    assert write(one / "driver_override", "vfio-pci\n") == "ok"
    assert (one / "driver_override").read_text() == "vfio-pci\n"
    assert write(probe, "0000:00:02.1\n") == "ok"
    add_group, add_vfio, bind = evs = events.events(3)
    assert brief(evs) == [("add", "/devices/virtual/vfio/14", "vfio", ""),
                          ("add", f"{vf(1)}/vfio-dev/vfio0", "vfio-dev", ""),
                          ("bind", vf(1), "pci", "vfio-pci")]
    assert add_group["props"]["DEVNAME"] == "/dev/vfio/14"  # udev makes /dev/vfio/14 of it
    assert os.readlink(one / "driver") == "../../../bus/pci/drivers/vfio-pci"
    assert sriov.sys("/class/vfio/14").resolve() == sriov.sys("/devices/virtual/vfio/14")
    assert sriov.sys("/bus/pci/drivers/vfio-pci/0000:00:02.1").resolve() == one
    assert (sriov.sys("/devices/virtual/vfio/14/dev")).read_text() == "242:14\n"
    assert write(probe, "0000:00:02.9\n") == "ENODEV"
    assert write(sriov.sys("/bus/pci/drivers/i915/unbind"), "0000:00:02.1") == "ENODEV"
    assert write(sriov.sys("/bus/pci/drivers/vfio-pci/bind"), "0000:00:02.1") == "EBUSY"
    # Released from vfio-pci, the override stays: no host driver takes it.
    assert write(sriov.sys("/bus/pci/drivers/vfio-pci/unbind"), "0000:00:02.1\n") == "ok"
    assert brief(events.events(3)) == [("remove", f"{vf(1)}/vfio-dev/vfio0", "vfio-dev", ""),
                                       ("remove", "/devices/virtual/vfio/14", "vfio", ""),
                                       ("unbind", vf(1), "pci", "")]
    assert not sriov.sys("/devices/virtual/vfio/14").exists()
    assert write(sriov.sys("/bus/pci/drivers/i915/bind"), "0000:00:02.1") == "ENODEV"
    assert write(sriov.sys("/bus/pci/drivers/vfio-pci/bind"), "0000:00:02.1") == "ok"
    assert [e["action"] for e in events.events(3)] == ["add", "add", "bind"]
    log = sriov.call("write_log")
    assert ["/sys/bus/pci/drivers_probe", "0000:00:02.9\n", "ENODEV"] in [r[:3] for r in log]


def test_errnos_from_real_writes(make_host: Callable[..., HostProc]) -> None:
    def numvfs_errno(host: HostProc, text: str) -> int:
        fd = os.open(host.sys(PF) / "sriov_numvfs", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        except OSError as e:
            return e.errno or 0
        finally:
            os.close(fd)
        return 0

    host = make_host("alderlake-sriov")
    assert numvfs_errno(host, "8\n") == errno.ERANGE
    assert numvfs_errno(host, "seven\n") == errno.EINVAL
    assert numvfs_errno(host, "2\n") == 0
    assert numvfs_errno(host, "3\n") == errno.EBUSY
    assert numvfs_errno(host, "2\n") == 0  # the current count
    assert numvfs_errno(make_host("alderlake-stock"), "1\n") == errno.ENOENT
    maxvfs0 = make_host("alderlake-maxvfs0")
    assert maxvfs0.sys(f"{PF}/sriov_totalvfs").read_text() == "0\n"
    assert numvfs_errno(maxvfs0, "1\n") == errno.ERANGE
    host.call("unbind_driver", "0000:00:02.0")
    assert numvfs_errno(host, "1\n") == errno.ENOENT  # no driver bound


def test_unbinding_the_pf_driver_removes_its_vfs_first(make_host: Callable[..., HostProc]) -> None:
    host = make_host("tigerlake-xe")
    m = Monitor(host)
    try:
        assert write(host.sys(PF) / "sriov_numvfs", "2") == "ok"
        assert [e["props"].get("DRIVER", "") for e in m.events(7)][2] == "xe"
        host.call("unbind_driver", "0000:00:02.0")
        assert brief(m.events(5)) == [
            ("unbind", vf(1), "pci", ""), ("remove", vf(1), "pci", ""),
            ("unbind", vf(2), "pci", ""), ("remove", vf(2), "pci", ""),
            ("unbind", PF, "pci", "")]
        assert host.sys(f"{PF}/sriov_numvfs").read_text() == "0\n"
        assert not os.path.lexists(host.sys(PF) / "driver")
        host.call("bind_driver", "0000:00:02.0", "xe")
        assert brief(m.events(1)) == [("bind", PF, "pci", "xe")]
        # A host driver grabbing a VF whatever autoprobe and the override say
        assert write(host.sys(PF) / "sriov_drivers_autoprobe", "0") == "ok"
        assert write(host.sys(PF) / "sriov_numvfs", "1") == "ok"
        m.events(3)
        host.call("bind_driver", "0000:00:02.1", "xe")
        assert brief(m.events(1)) == [("bind", vf(1), "pci", "xe")]
        with pytest.raises(OSError) as info:
            host.call("bind_driver", "0000:00:02.1", "vfio-pci")
        assert info.value.errno == errno.EBUSY
    finally:
        m.close()


def test_reboot_forgets_every_vf(sriov: HostProc, events: Monitor) -> None:
    pf = sriov.sys(PF)
    assert write(pf / "sriov_drivers_autoprobe", "0") == "ok"
    assert write(pf / "sriov_numvfs", "3") == "ok"
    events.events(7)
    assert write(sriov.sys(vf(2)) / "driver_override", "vfio-pci") == "ok"
    assert write(sriov.sys("/bus/pci/drivers_probe"), "0000:00:02.2") == "ok"
    events.events(3)
    sriov.call("forget_vfs")
    assert sriov.call("pci_devices") == [["0000:00:02.0", "i915", ""]]
    assert (pf / "sriov_numvfs").read_text() == "0\n"
    assert (pf / "sriov_drivers_autoprobe").read_text() == "1\n"
    assert os.listdir(sriov.sys("/bus/pci/devices")) == ["0000:00:02.0"]
    assert not os.path.lexists(sriov.sys("/class/vfio/15"))
    assert not os.path.lexists(sriov.sys("/class/vfio-dev/vfio0"))
    assert sorted(os.listdir(sriov.sys("/kernel/iommu_groups"))) == ["0"]
    # Nothing was sent: the next event the monitor gets is the next one sent.
    assert write(pf / "sriov_numvfs", "1") == "ok"
    assert brief(events.events(1)) == [("add", vf(1), "pci", "")]


def test_libudev_sees_the_vfs(sriov: HostProc) -> None:
    """A preloaded child enumerates the PCI bus (the FUSE-served /sys/bus/pci) with libudev."""
    pf = sriov.sys(PF)
    assert write(pf / "sriov_drivers_autoprobe", "0") == "ok"
    assert write(pf / "sriov_numvfs", "2") == "ok"
    assert write(sriov.sys(vf(2)) / "driver_override", "vfio-pci") == "ok"
    assert write(sriov.sys("/bus/pci/drivers_probe"), "0000:00:02.2") == "ok"
    code = (
        "import pyudev\n"
        "for d in sorted(pyudev.Context().list_devices(subsystem='pci'), key=lambda d: d.sys_name):\n"
        "    print(d.sys_name, d.driver, d.properties.get('PCI_ID'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=sriov.child_env(),
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["0000:00:02.0 i915 8086:46A6", "0000:00:02.1 None 8086:46A6",
                                       "0000:00:02.2 vfio-pci 8086:46A6"]

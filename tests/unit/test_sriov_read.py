"""The PCI SR-IOV ABI over a plain directory laid out as Linux's sysfs (gvtd.sriov): what
is read, the VF address arithmetic, what is written where, and each errno's sentence."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from test_mdev_read import _files, _link

from gvtd.errors import Busy, Failed, NoCapacity, ParentMissing
from gvtd.sriov import PciSriov, PhysFn, numvfs_error, vf_address

GPU = "devices/pci0000:00/0000:00:02.0"
NVME = "devices/pci0000:00/0000:00:01.0/0000:01:00.0"
NIC = "devices/pci0000:00/0000:00:1c.0/0000:02:00.0"


def _pf(sys: Path, path: str, ids: dict[str, str], driver: str, total: int, num: int,
        offset: int = 1, stride: int = 1) -> Path:
    dev = sys / path
    _files(dev, {**ids, "sriov_totalvfs": f"{total}\n", "sriov_numvfs": f"{num}\n",
                 "sriov_offset": f"{offset}\n", "sriov_stride": f"{stride}\n",
                 "sriov_drivers_autoprobe": "0\n"})
    if driver:
        _link(dev / "driver", sys / "bus/pci/drivers" / driver)
    _link(sys / "bus/pci/devices" / dev.name, dev)
    return dev


def _vf(sys: Path, pf: Path, index: int, name: str, driver: str = "") -> Path:
    vf = pf.parent / name
    _files(vf, {"vendor": "0x8086\n", "device": "0x46a6\n", "class": "0x030000\n",
                "driver_override": "(null)\n"})
    _link(vf / "physfn", pf)
    _link(pf / f"virtfn{index}", vf)
    _link(sys / "bus/pci/devices" / name, vf)
    if driver:
        _link(vf / "driver", sys / "bus/pci/drivers" / driver)
    return vf


def _tree(root: Path) -> Path:
    sys = root / "sys"
    (sys / "bus/pci/drivers").mkdir(parents=True)
    gpu = _pf(sys, GPU, {"vendor": "0x8086\n", "device": "0x46a6\n", "class": "0x030000\n"},
              "i915", 7, 2)
    _vf(sys, gpu, 0, "0000:00:02.1", "vfio-pci")
    _vf(sys, gpu, 1, "0000:00:02.2", "i915")
    _pf(sys, NVME, {"vendor": "0x1b36\n", "device": "0x0010\n", "class": "0x010802\n"},
        "nvme", 2, 0)
    nic = sys / NIC  # a PCI device without SR-IOV
    _files(nic, {"vendor": "0x8086\n", "device": "0x15b8\n", "class": "0x020000\n"})
    _link(sys / "bus/pci/devices/0000:02:00.0", nic)
    return sys


def test_an_intel_gpu_is_found_and_another_device_only_when_named(tmp_path: Path) -> None:
    sys = _tree(tmp_path)
    (gpu,) = PciSriov(sys).physfns()
    assert (gpu.name, gpu.syspath, gpu.driver, gpu.vendor, gpu.device, gpu.total_vfs,
            gpu.num_vfs, gpu.offset, gpu.stride, gpu.autoprobe, gpu.vfs) == (
        "0000:00:02.0", str(sys / GPU), "i915", 0x8086, 0x46a6, 7, 2, 1, 1, False,
        ("0000:00:02.1", "0000:00:02.2"))
    assert gpu.intel_display
    named = PciSriov(sys).physfns(frozenset({"0000:01:00.0", "0000:02:00.0"}))
    assert [(p.name, p.driver, p.total_vfs, p.vfs) for p in named] == [
        ("0000:00:02.0", "i915", 7, ("0000:00:02.1", "0000:00:02.2")),
        ("0000:01:00.0", "nvme", 2, ())]  # the NIC has no sriov_totalvfs: no PF
    assert PciSriov(sys).physfn("0000:02:00.0") is None
    assert PciSriov(sys).physfn("../../etc") is None  # never a path of its own


def test_vfs_with_their_driver_override_and_pf(tmp_path: Path) -> None:
    sys = _tree(tmp_path)
    pci = PciSriov(sys)
    gpu = pci.physfn("0000:00:02.0")
    assert gpu is not None
    vfs = pci.virtfns(gpu)
    assert [(v.name, v.physfn, v.driver, v.driver_override) for v in vfs.values()] == [
        ("0000:00:02.1", "0000:00:02.0", "vfio-pci", ""),
        ("0000:00:02.2", "0000:00:02.0", "i915", "")]
    (sys / GPU).parent.joinpath("0000:00:02.1/driver_override").write_text("vfio-pci\n")
    assert pci.virtfn("0000:00:02.1").driver_override == "vfio-pci"  # type: ignore[union-attr]
    assert pci.virtfn("0000:00:02.0") is None  # the PF is no VF
    assert pci.vf_at("0000:00:02.0", 1) == vfs["0000:00:02.2"]
    assert pci.vf_at("0000:00:02.0", 2) is None and pci.vf_at("0000:00:03.0", 0) is None
    assert pci.virtfn("0000:00:02.5") is None  # not made


def test_a_pf_taken_down_while_read_is_absent_not_an_error(tmp_path: Path) -> None:
    sys = _tree(tmp_path)
    for f in ("sriov_numvfs", "sriov_offset", "sriov_stride", "sriov_drivers_autoprobe"):
        (sys / GPU / f).unlink()
    (sys / GPU / "virtfn1").unlink()
    gpu = PciSriov(sys).physfn("0000:00:02.0")
    assert gpu is not None and (gpu.num_vfs, gpu.vfs) == (0, ())
    (sys / GPU / "sriov_totalvfs").unlink()
    assert PciSriov(sys).physfns() == []


@pytest.mark.parametrize("pf, offset, stride, index, vf", [
    ("0000:00:02.0", 1, 1, 0, "0000:00:02.1"),  # Alder Lake's i915 / xe
    ("0000:00:02.0", 1, 1, 6, "0000:00:02.7"),
    ("0000:01:00.0", 1, 1, 1, "0000:01:00.2"),  # QEMU's nvme
    ("0000:01:00.0", 128, 2, 0, "0000:01:10.0"),  # QEMU's igb: offset 128, stride 2
    ("0000:01:00.0", 128, 2, 6, "0000:01:11.4"),
    ("0000:00:1f.7", 1, 1, 0, "0000:01:00.0"),  # the next routing id is on the next bus
    ("0001:3a:00.1", 7, 1, 2, "0001:3a:01.2"),
])
def test_vf_address_from_routing_id_offset_and_stride(pf: str, offset: int, stride: int,
                                                      index: int, vf: str) -> None:
    assert vf_address(pf, offset, stride, index) == vf


def test_vf_address_rejects_what_has_no_address() -> None:
    with pytest.raises(ValueError):
        vf_address("0000:ff:1f.7", 1, 1, 0)
    with pytest.raises(ValueError):
        vf_address("0000:00:02", 1, 1, 0)


def test_the_virtfn_link_wins_over_arithmetic(tmp_path: Path) -> None:
    """offset and stride may not be what the links say (a quirk): follow the links."""
    sys = _tree(tmp_path)
    (sys / GPU / "sriov_offset").write_text("8\n")
    gpu = PciSriov(sys).physfn("0000:00:02.0")
    assert gpu is not None
    assert [gpu.vf_address(i) for i in (0, 1, 2)] == ["0000:00:02.1", "0000:00:02.2",
                                                       "0000:00:03.2"]


def test_writes_go_to_the_files_read_back(tmp_path: Path) -> None:
    sys = _tree(tmp_path)
    pci = PciSriov(sys)
    for d in ("i915", "vfio-pci"):
        (sys / "bus/pci/drivers" / d).mkdir(exist_ok=True)
        (sys / "bus/pci/drivers" / d / "unbind").write_text("")
    (sys / "bus/pci/drivers_probe").write_text("")
    gpu = pci.physfn("0000:00:02.0")
    assert gpu is not None
    for f in ("sriov_numvfs", "sriov_drivers_autoprobe"):
        (sys / GPU / f).write_text("")  # a plain file keeps what a write does not overwrite
    pci.set_autoprobe(gpu, False)
    pci.set_numvfs(gpu, 3)
    assert (sys / GPU / "sriov_numvfs").read_text() == "3"
    assert (sys / GPU / "sriov_drivers_autoprobe").read_text() == "0"
    assert pci.bind_vfio(gpu, 0) == "0000:00:02.1"  # on vfio-pci already: nothing written
    assert (sys / "bus/pci/drivers_probe").read_text() == ""
    # a plain directory binds nothing: the VF stays off vfio-pci, and that is an error
    with pytest.raises(Failed, match=r"0000:00:02.2 of 0000:00:02.0 did not bind to "
                       r"vfio-pci \(it is on i915\): load the vfio-pci module"):
        pci.bind_vfio(gpu, 1)
    assert (sys / "bus/pci/drivers/i915/unbind").read_text() == "0000:00:02.2"
    assert (sys / GPU).parent.joinpath("0000:00:02.2/driver_override").read_text() == "vfio-pci"
    assert (sys / "bus/pci/drivers_probe").read_text() == "0000:00:02.2"
    pci.unbind(gpu, 0)
    assert (sys / "bus/pci/drivers/vfio-pci/unbind").read_text() == "0000:00:02.1"
    with pytest.raises(ParentMissing, match="has no VF 5"):
        pci.bind_vfio(gpu, 5)


def _physfn(driver: str, total: int = 7) -> PhysFn:
    return PhysFn("0000:00:02.0", "/sys/devices/pci0000:00/0000:00:02.0", driver, 0x8086,
                  0x46a6, 0x030000, total, 0, 1, 1, False)


def test_each_errno_of_sriov_numvfs_says_what_to_do() -> None:
    def err(code: int, driver: str, total: int = 7) -> Exception:
        return numvfs_error(OSError(code, os.strerror(code)), _physfn(driver, total), 3)

    e = err(errno.ENOENT, "i915")
    assert isinstance(e, Failed) and "i915 without SR-IOV: the stock module" in e.message \
        and "strongtz/i915-sriov-dkms" in e.message and "xe" in e.message
    e = err(errno.ENOENT, "")
    assert isinstance(e, ParentMissing) and "bind its driver" in e.message
    e = err(errno.ENOENT, "nvme")
    assert isinstance(e, Failed) and "(nvme) cannot make VFs" in e.message
    e = err(errno.ERANGE, "i915", 0)
    assert isinstance(e, NoCapacity) and "allows 0 VFs, 3 needed" in e.message \
        and "set i915.max_vfs=3" in e.message
    assert "set xe.max_vfs=3" in err(errno.ERANGE, "xe").message  # type: ignore[attr-defined]
    assert "define at most 2 VFs" in err(errno.ERANGE, "nvme", 2).message  # type: ignore[attr-defined]
    e = err(errno.EBUSY, "i915")
    assert isinstance(e, Busy) and "only through 0" in e.message
    e = err(errno.EACCES, "i915")
    assert isinstance(e, Failed) and "units/gvtd.service" in e.message
    e = err(errno.EROFS, "i915")
    assert isinstance(e, Failed) and "drop-in in docs/security.md" in e.message

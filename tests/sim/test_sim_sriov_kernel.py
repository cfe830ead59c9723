"""The PCI SR-IOV core's rules in the pure kernel model: errnos, limits, matching, reboot."""

from __future__ import annotations

import errno

import pytest

from gvtd.sim.kernel import VFIO_PCI, Kernel, PciDevice, make_kernel

PF = "0000:00:02.0"


def errno_of(fn: object, *args: object) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.errno


def pf_of(k: Kernel) -> PciDevice:
    return k.pci[PF]


def enable(k: Kernel, n: int) -> list[PciDevice]:
    """What the host does for a write of n: the VFs, linked, then the count."""
    pf = pf_of(k)
    assert pf.sriov is not None
    vfs = [k.add_vf(pf, i) for i in range(n)]
    for vf in vfs:
        vf.linked = True
    pf.sriov.num = n
    return vfs


def test_numvfs_parsing_and_limits() -> None:
    k = make_kernel("alderlake-sriov")
    pf = pf_of(k)
    assert k.totalvfs(pf) == 7
    for bad in ["", "x", "-1", "1.0", " 1", "1\n\n", "65536", "0x"]:
        assert errno_of(k.numvfs_request, pf, bad) == errno.EINVAL, bad
    for text, n in [("3\n", 3), ("0x7", 7), ("07", 7), ("+2", 2)]:
        assert k.numvfs_request(pf, text) == n
    assert errno_of(k.numvfs_request, pf, "8\n") == errno.ERANGE
    assert errno_of(k.numvfs_request, pf, "65535") == errno.ERANGE
    assert k.numvfs_request(pf, "0\n") is None  # the current count: nothing to do


def test_ebusy_while_vfs_exist_and_the_same_count_is_a_no_op() -> None:
    k = make_kernel("alderlake-sriov")
    pf = pf_of(k)
    enable(k, 2)
    assert errno_of(k.numvfs_request, pf, "3") == errno.EBUSY
    assert errno_of(k.numvfs_request, pf, "1") == errno.EBUSY
    assert k.numvfs_request(pf, "2\n") is None
    assert k.numvfs_request(pf, "0") == 0
    assert errno_of(k.numvfs_request, pf, "8") == errno.ERANGE  # ERANGE is checked first


def test_enoent_without_a_driver_or_without_sriov_configure() -> None:
    stock = make_kernel("alderlake-stock")
    pf = pf_of(stock)
    assert stock.totalvfs(pf) == 7  # the capability's TotalVFs: the stock i915 sets none
    with pytest.raises(OSError) as info:
        stock.numvfs_request(pf, "1")
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == "driver does not support SR-IOV configuration via sysfs"
    assert stock.numvfs_request(pf, "0") is None  # the current count needs no driver

    k = make_kernel("alderlake-sriov")
    pf = pf_of(k)
    k.unbind(pf)
    with pytest.raises(OSError) as info:
        k.numvfs_request(pf, "1")
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == "no driver bound to device; cannot configure SR-IOV"


def test_max_vfs_is_the_drivers_limit() -> None:
    k = make_kernel("alderlake-maxvfs0")
    pf = pf_of(k)
    assert k.totalvfs(pf) == 0  # i915 with max_vfs=0 calls pci_sriov_set_totalvfs(0)
    assert errno_of(k.numvfs_request, pf, "1") == errno.ERANGE
    assert k.numvfs_request(pf, "0") is None
    k.unbind(pf)  # pci_iov_remove(): the capability's TotalVFs again
    assert k.totalvfs(pf) == 7
    k.pci_drivers["i915"].max_vfs = 3
    k.bind(pf, "i915")
    assert k.totalvfs(pf) == 3 and k.numvfs_request(pf, "3") == 3
    assert errno_of(k.numvfs_request, pf, "4") == errno.ERANGE


def test_vf_addresses_groups_and_ids() -> None:
    k = make_kernel("tigerlake-xe")
    pf = pf_of(k)
    vfs = enable(k, 7)
    assert [v.name for v in vfs] == [f"0000:00:02.{i}" for i in range(1, 8)]
    assert [v.iommu_group for v in vfs] == list(range(14, 21))  # each its own group
    assert all(v.physfn == PF and v.device == 0x9A49 and v.driver is None for v in vfs)
    assert [v.vf_index for v in k.vfs_of(PF)] == list(range(7))
    assert vfs[0].uevent()["PCI_ID"] == "8086:9A49" and "DRIVER" not in vfs[0].uevent()
    k.drop_vf(vfs[2])
    assert k.add_vf(pf, 2).iommu_group == 16  # the lowest free group again
    assert pf.sriov is not None
    pf.sriov.offset, pf.sriov.stride = 128, 2  # as QEMU's igb: follow offset and stride
    assert k.vf_address(pf, 0) == "0000:00:12.0" and k.vf_address(pf, 1) == "0000:00:12.2"


def test_probe_follows_autoprobe_and_driver_override() -> None:
    k = make_kernel("alderlake-sriov")
    pf = pf_of(k)
    assert pf.sriov is not None
    vf, = enable(k, 1)
    assert k.probe(vf) == "i915"  # autoprobe 1: the PF's driver takes its VF
    pf.sriov.autoprobe = False
    assert k.probe(vf) is None
    k.set_override(vf, "vfio-pci\n")
    assert vf.driver_override == "vfio-pci" and k.probe(vf) == VFIO_PCI
    k.set_override(vf, "nvme\n")  # a driver that is not loaded: nothing binds
    assert k.probe(vf) is None
    for clear in ["\n", ""]:
        k.set_override(vf, "vfio-pci")
        k.set_override(vf, clear)
        assert vf.driver_override is None
    assert errno_of(k.set_override, vf, "x" * 4095) == errno.EINVAL
    for text, value in [("0", False), ("1\n", True), ("n", False), ("Y", True),
                        ("off", False), ("on", True)]:
        k.set_autoprobe(pf, text)
        assert pf.sriov.autoprobe is value, text
    for bad in ["2", "", "o", "x"]:
        assert errno_of(k.set_autoprobe, pf, bad) == errno.EINVAL, bad


def test_bind_and_unbind_files() -> None:
    k = make_kernel("alderlake-sriov")
    pf = pf_of(k)
    assert pf.sriov is not None
    pf.sriov.autoprobe = False
    vf, = enable(k, 1)
    assert errno_of(k.check_bind, "i915", vf) == errno.ENODEV  # may not probe: autoprobe 0
    assert errno_of(k.check_bind, VFIO_PCI, vf) == errno.ENODEV  # vfio-pci has no id table
    k.set_override(vf, VFIO_PCI)
    assert errno_of(k.check_bind, "i915", vf) == errno.ENODEV  # the override names another
    k.check_bind(VFIO_PCI, vf)
    k.bind(vf, VFIO_PCI)
    assert vf.vfio == 0 and vf.vfio_dev and k.vfio_groups() == {14: [vf]}
    assert errno_of(k.check_bind, VFIO_PCI, vf) == errno.EBUSY
    assert errno_of(k.check_unbind, "i915", vf) == errno.ENODEV
    k.check_unbind(VFIO_PCI, vf)
    k.unbind(vf)
    assert vf.driver is None and k.vfio_groups() == {}
    assert errno_of(k.pci_device, "0000:00:02.7") == errno.ENODEV
    assert k.pci_device("0000:00:02.1\n") is vf  # sysfs_streq: one newline does not count
    assert k.probe_failure(k.pci_drivers[VFIO_PCI], pf) == errno.EBUSY  # a PF with VFs
    vf.iommu_group = None
    assert k.probe_failure(k.pci_drivers[VFIO_PCI], vf) == errno.EINVAL  # no IOMMU group
    assert k.probe(vf) is None and k.failing_probe(vf) == VFIO_PCI
    assert errno_of(k.check_bind, VFIO_PCI, vf) == errno.EINVAL


def test_reboot_forgets_vfs() -> None:
    k = make_kernel("alderlake-sriov")
    pf = pf_of(k)
    assert pf.sriov is not None
    pf.sriov.autoprobe = False
    vf, _ = enable(k, 2)
    k.set_override(vf, VFIO_PCI)
    k.bind(vf, VFIO_PCI)
    k.set_override(pf, "vfio-pci")
    k.unbind(pf)
    assert sorted(v.name for v in k.forget_vfs()) == ["0000:00:02.1", "0000:00:02.2"]
    assert list(k.pci) == [PF] and k.iommu_groups == {0}
    assert (pf.sriov.num, pf.sriov.autoprobe, pf.driver_override) == (0, True, None)
    assert pf.driver == "i915" and k.totalvfs(pf) == 7  # bound at boot again


def test_gvt_profiles_have_no_pci_functions_of_the_sriov_core() -> None:
    k = make_kernel()
    assert k.pci == {} and list(k.pci_drivers) == [VFIO_PCI]

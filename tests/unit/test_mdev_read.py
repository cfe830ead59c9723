"""Reading the mdev ABI from a plain directory laid out as Linux's sysfs (gvtd.mdev.Sysfs)."""

import os
from pathlib import Path

from gvtd.mdev import Sysfs

GPU = "devices/pci0000:00/0000:00:02.0"
MTTY = "devices/virtual/mtty/mtty0"
UUID = "4b20d080-1b54-4048-85b3-a6a62d165c01"


def _files(base: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(text)


def _link(at: Path, target: Path) -> None:
    at.parent.mkdir(parents=True, exist_ok=True)
    at.symlink_to(os.path.relpath(target, at.parent))


def _tree(root: Path) -> Path:
    sys = root / "sys"
    gpu, mtty = sys / GPU, sys / MTTY
    _files(gpu, {"vendor": "0x8086\n", "device": "0x5917\n", "class": "0x030000\n"})
    _link(gpu / "driver", sys / "bus/pci/drivers/i915")
    _files(gpu / "mdev_supported_types/i915-GVTg_V5_4", {
        "name": "GVTg_V5_4\n", "device_api": "vfio-pci\n", "available_instances": "3\n",
        "description": "low_gm_size: 128MB\nhigh_gm_size: 512MB\nfence: 4\nresolution: "
                       "1920x1200\nweight: 4\n"})
    _files(mtty / "mdev_supported_types/mtty-2", {
        "name": "Dual port serial\n", "device_api": "vfio-pci\n", "available_instances": "7\n",
        "description": "\n"})
    _link(sys / "class/mdev_bus/0000:00:02.0", gpu)
    _link(sys / "class/mdev_bus/mtty0", mtty)
    _link(sys / "bus/pci/devices/0000:00:02.0", gpu)
    (mtty / UUID).mkdir()
    _link(mtty / UUID / "mdev_type", mtty / "mdev_supported_types/mtty-2")
    _link(sys / "bus/mdev/devices" / UUID, mtty / UUID)
    return sys


def test_parents_types_and_mdevs(tmp_path: Path) -> None:
    sys = _tree(tmp_path)
    gpu, mtty = Sysfs(sys).parents()
    assert (gpu.name, gpu.syspath, gpu.driver, gpu.vendor, gpu.device, gpu.registered) == \
        ("0000:00:02.0", str(sys / GPU), "i915", 0x8086, 0x5917, True)
    (t,) = gpu.types
    assert (t.id, t.name, t.device_api, t.available) == ("i915-GVTg_V5_4", "GVTg_V5_4",
                                                         "vfio-pci", 3)
    assert t.gvt is not None and t.gvt.resolution_text == "1920x1200"
    assert (mtty.name, mtty.syspath, mtty.driver, mtty.vendor) == ("mtty0", str(sys / MTTY), "",
                                                                    None)
    assert [(t.id, t.name, t.available) for t in mtty.types] == [("mtty-2", "Dual port serial",
                                                                   7)]
    mdev = Sysfs(sys).mdevs()[UUID]
    assert (mdev.parent, mdev.type_id) == ("mtty0", "mtty-2")


def test_available_instances_is_read_again_and_the_rest_once(tmp_path: Path) -> None:
    """What a driver fixes at registration is read once; the count at every read."""
    sys = _tree(tmp_path)
    sysfs = Sysfs(sys)
    sysfs.parents()
    types = sys / MTTY / "mdev_supported_types/mtty-2"
    (types / "available_instances").write_text("6\n")
    (types / "name").write_text("renamed\n")
    (t,) = sysfs.parent("mtty0").types  # type: ignore[union-attr]
    assert (t.available, t.name) == (6, "Dual port serial")


def test_an_intel_gpu_not_registered_is_shown_without_types(tmp_path: Path) -> None:
    sys = _tree(tmp_path)
    (sys / "class/mdev_bus/0000:00:02.0").unlink()
    gpu = Sysfs(sys).parent("0000:00:02.0")
    assert gpu is not None and (gpu.registered, gpu.types, gpu.vendor) == (False, (), 0x8086)


def test_a_type_without_its_files_and_a_parent_without_types(tmp_path: Path) -> None:
    """Read while the kernel takes them down: what is gone reads as absent, not an error."""
    sys = _tree(tmp_path)
    for f in (sys / MTTY / "mdev_supported_types/mtty-2").iterdir():
        f.unlink()
    for f in (sys / GPU / "mdev_supported_types/i915-GVTg_V5_4").iterdir():
        f.unlink()
    (sys / GPU / "mdev_supported_types/i915-GVTg_V5_4").rmdir()
    (sys / GPU / "mdev_supported_types").rmdir()
    gpu, mtty = Sysfs(sys).parents()
    assert gpu.types == ()
    assert [(t.id, t.name, t.available) for t in mtty.types] == [("mtty-2", "mtty-2", 0)]

"""GVT-g knowledge: descriptions, type choice, platforms."""

import errno
from pathlib import Path

import pytest

from gvtd import gvt, reconcile
from gvtd.config import Definition
from gvtd.errors import Busy, Failed, InvalidArgument, NoCapacity, ParentMissing
from gvtd.mdev import MdevType, Parent, Sysfs

DESC = "low_gm_size: {}MB\nhigh_gm_size: {}MB\nfence: 4\nresolution: {}\nweight: {}\n"
SPECS = {"i915-GVTg_V5_8": (64, 384, "1024x768", 2), "i915-GVTg_V5_4": (128, 512, "1920x1200", 4),
         "i915-GVTg_V5_2": (256, 1024, "1920x1200", 8), "i915-GVTg_V5_1": (512, 2048, "1920x1200", 16)}


def kbl(available: dict[str, int] | None = None) -> Parent:
    available = available or {"i915-GVTg_V5_8": 2, "i915-GVTg_V5_4": 1}
    types = tuple(
        MdevType(id=t, name=t[5:], description=DESC.format(*s), device_api="vfio-pci",
                 available=available.get(t, 0), gvt=gvt.parse_description(DESC.format(*s)))
        for t, s in SPECS.items())
    return Parent("0000:00:02.0", "/sys/devices/pci0000:00/0000:00:02.0", "i915", 0x8086,
                  0x5917, True, types)


def test_parse_description() -> None:
    info = gvt.parse_description(DESC.format(128, 512, "1920x1200", 4))
    assert info == gvt.GvtTypeInfo(128, 512, 4, (1920, 1200), 4)


@pytest.mark.parametrize("text", [None, "", "Single port serial", "low_gm_size: xMB\n"])
def test_other_descriptions_are_not_gvt(text: str | None) -> None:
    assert gvt.parse_description(text) is None


@pytest.mark.parametrize("want, expected", [
    ((800, 600), "i915-GVTg_V5_8"),
    ((1024, 768), "i915-GVTg_V5_8"),
    ((1920, 1080), "i915-GVTg_V5_4"),
    ((1920, 1200), "i915-GVTg_V5_4"),
])
def test_choose_smallest_type_that_fits(want: tuple[int, int], expected: str) -> None:
    assert reconcile.choose_type(kbl(), want) == expected


def test_no_type_reaches_resolution() -> None:
    with pytest.raises(InvalidArgument, match="reaches 3840x2160"):
        reconcile.choose_type(kbl(), (3840, 2160))


def test_resolve_auto_and_missing_parent() -> None:
    d = Definition(uuid="fff6f017-3417-4ad3-b05e-17ae3e1a4615", min_resolution="1920x1080")
    assert reconcile.resolve(d, [kbl()]).type_id == "i915-GVTg_V5_4"
    with pytest.raises(ParentMissing):
        reconcile.resolve(d, [])
    named = d.model_copy(update={"parent": "0000:00:03.0"})
    with pytest.raises(ParentMissing, match="does not exist"):
        reconcile.resolve(named, [kbl()])


@pytest.mark.parametrize("device, name, supported", [
    (0x5917, "Kaby Lake", True), (0x3E9B, "Coffee Lake", True), (0x9BC4, "Comet Lake", True),
    (0x1616, "Broadwell", True), (0x8A52, "Ice Lake", False), (0x9A49, "Tiger Lake", False),
])
def test_platforms(device: int, name: str, supported: bool) -> None:
    assert gvt.platform(0x8086, device) == (name, supported)
    assert gvt.platform(0x10DE, device) == ("", False)


class _Sysfs(Sysfs):
    def parent(self, name: str) -> Parent | None:
        return kbl({"i915-GVTg_V5_8": 1})


@pytest.mark.parametrize("code, error, text", [
    (errno.ENOSPC, NoCapacity, "i915-GVTg_V5_8 (1024x768) still fits"),
    (errno.EUSERS, NoCapacity, "needs 128 MB of aperture"),
    (errno.EEXIST, Busy, "already exists"),
    (errno.EINVAL, InvalidArgument, "rejected UUID"),
    (errno.ENODEV, ParentMissing, "went away"),
    (errno.EACCES, Failed, "must run as root"),
    (errno.EIO, Failed, "Input/output error"),
])
def test_errno_mapping(code: int, error: type, text: str) -> None:
    p = kbl()
    e = _Sysfs(Path("/nonexistent"))._create_error(OSError(code, __import__("os").strerror(code)),
                                                   p, "i915-GVTg_V5_4", "u")
    assert isinstance(e, error)
    assert text in e.message


def test_find_a_definition_before_its_view_exists(tmp_path: Path) -> None:
    """Found by fuzzing: DetachVGPU during a Define saw the definition but not its view."""
    from gvtd.config import ConfigDir
    from gvtd.host import Host
    from gvtd.state import Ownership

    host = Host(ConfigDir(tmp_path), Sysfs(tmp_path / "sys"), Ownership(tmp_path / "state"))
    host.definitions["a"] = Definition(uuid="fff6f017-3417-4ad3-b05e-17ae3e1a4615",
                                       type="i915-GVTg_V5_4")
    assert host.find("a").name == "a"


def test_a_failed_uevent_pass_is_in_problems_and_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A pass over uevents that fails, and fails again re-reading everything (a reader
    below the host that breaks): logged and in Problems, not lost with its task."""
    import asyncio

    from gvtd.config import ConfigDir
    from gvtd.host import Host
    from gvtd.state import Ownership
    from gvtd.status import Status
    from gvtd.udev import Uevent

    class Broken(Sysfs):
        def mdevs(self) -> dict:  # type: ignore[override, type-arg]
            raise RuntimeError("the reader broke")

    host = Host(ConfigDir(tmp_path), Broken(tmp_path / "sys"), Ownership(tmp_path / "state"))

    async def go() -> None:
        host.on_uevents([Uevent("change")])  # names nothing: everything is re-read
        assert host.uevents.drainer is not None
        await asyncio.wait({host.uevents.drainer})  # its done-callbacks run in order: ours first

    caplog.set_level("ERROR", logger="gvtd.host")
    asyncio.run(go())
    (problem,) = [p for p in Status(host, []).problems() if p[0] == "host:uevents"]
    assert "the reader broke" in problem[2] and "gvt-client reload" in problem[3]
    assert any("Failed to follow the kernel's uevents" in r.getMessage()
               for r in caplog.records)

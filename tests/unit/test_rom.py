"""Which ROM files a caller may have gvtd (root, through libvirt) give a VM: only those
every user may read and only root may change, on real files and directories."""

import os
from pathlib import Path

import pytest

from gvtd.errors import InvalidArgument, NotFound
from gvtd.virt.rom import check_rom
from test_newdomain import iso  # noqa: F401 (a fixture)

PUBLIC = "/usr/share/common-licenses/GPL-3"  # base-files: root's, 0644, under /usr/share


@pytest.fixture
def share(iso: Path) -> Path:
    """A directory standing for /usr/share, with a ROM in it: the ISO's, root's and 0755
    right below /tmp (the tests run as root)."""
    assert os.geteuid() == 0, "these tests make root's files"
    iso.rename(iso.parent / "igd.rom")
    return iso.parent


def test_a_public_file_under_usr_share_is_taken_by_its_real_path(share: Path) -> None:
    assert check_rom(PUBLIC) == PUBLIC
    assert check_rom("/usr/share/common-licenses/../common-licenses/GPL-3") == PUBLIC
    (share / "gop.rom").symlink_to(share / "igd.rom")
    assert check_rom(str(share / "gop.rom"), (f"{share}/",)) == str(share / "igd.rom")


def test_nothing_outside_is_resolved(tmp_path: Path) -> None:
    """A link the caller could not read (root's directories) must not say where it leads:
    outside /usr/share the path is refused as given, even when it leads there."""
    link = tmp_path / "gop.rom"
    link.symlink_to(PUBLIC)
    for path in (str(link), "/usr/share/../../" + str(link)):
        with pytest.raises(InvalidArgument) as e:
            check_rom(path)
        assert PUBLIC not in str(e.value) and "is not under /usr/share" in str(e.value)


@pytest.mark.parametrize("path", ["/etc/passwd", "/var/lib/libvirt/qemu/nvram/w_VARS.fd",
                                  "relative.rom"])
def test_elsewhere_is_refused_with_the_fix(path: str) -> None:
    with pytest.raises(InvalidArgument, match="absolute|sudo install -m 644"):
        check_rom(path)


def test_a_link_from_usr_share_to_elsewhere_is_refused(share: Path) -> None:
    (share / "shadow.rom").symlink_to("/etc/shadow")
    with pytest.raises(InvalidArgument, match=r"\(/etc/shadow\) is not under"):
        check_rom(str(share / "shadow.rom"), (f"{share}/",))


def test_modes_and_owners(share: Path) -> None:
    dirs = (f"{share}/",)
    rom = share / "igd.rom"
    assert check_rom(str(rom), dirs) == str(rom)
    with pytest.raises(NotFound, match="There is no ROM"):
        check_rom(str(share / "missing.rom"), dirs)
    with pytest.raises(InvalidArgument, match="not a regular file"):
        check_rom(str(share), ("/tmp/",))
    for mode in (0o600, 0o664, 0o646):  # not readable by all; writable by others
        rom.chmod(mode)
        with pytest.raises(InvalidArgument, match="readable by all"):
            check_rom(str(rom), dirs)
    rom.chmod(0o644)
    os.chown(rom, 1000, 1000)  # someone's own file: they could change it after the check
    with pytest.raises(InvalidArgument, match="owner uid 1000"):
        check_rom(str(rom), dirs)
    os.chown(rom, 0, 0)
    share.chmod(0o777)  # anyone may replace the file before QEMU opens it
    with pytest.raises(InvalidArgument, match="someone other than root may change"):
        check_rom(str(rom), dirs)
    share.chmod(0o1777)  # sticky: only root may replace root's file
    assert check_rom(str(rom), dirs) == str(rom)
    share.chmod(0o750)  # QEMU's user may not enter
    with pytest.raises(InvalidArgument, match="not everyone may enter"):
        check_rom(str(rom), dirs)

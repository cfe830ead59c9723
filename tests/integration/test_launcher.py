"""`gvt-client desktop-entry`: the launcher a person installs for a VM, run as that person
(the stranger, in a home of its own). desktop-file-validate judges the entry, GLib reads it
as a desktop would, and --remove takes away exactly what the command wrote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gi
import pytest
from lxml import etree

from harness import STRANGER, TIMEOUT, Simulation

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

APPS = Path(".local/share/applications")
ICONS = Path(".local/share/icons/hicolor/scalable/apps")


@pytest.fixture
def home() -> Iterator[Path]:
    """The stranger's home: its own, where it writes as itself."""
    path = Path(tempfile.mkdtemp(prefix="gvtd-launcher-"))
    os.chown(path, STRANGER, STRANGER)
    yield path
    shutil.rmtree(path)


def client(home: Path, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    """gvt-client as the stranger: no bus is needed, none is given."""
    base = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    return subprocess.run(Simulation.as_stranger([sys.executable, "-m", "gvtd.client.main",
                                                  *args]),
                          env={**base, **(env or {})}, cwd=home, capture_output=True,
                          text=True, timeout=TIMEOUT)


def files(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*"))
            if p.is_file()}


def validate(entry: Path) -> None:
    p = subprocess.run(["desktop-file-validate", str(entry)], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert (p.returncode, p.stdout + p.stderr) == (0, "")


def app_info(entry: Path) -> Gio.DesktopAppInfo:
    """The entry as a desktop loads it (GLib finds its program, gvt-client, in PATH)."""
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    info = Gio.DesktopAppInfo.new_from_filename(str(entry))
    assert info is not None
    return info


def argv(entry: Path) -> list[str]:
    """The command a desktop runs for the entry: GLib's unquoting of its Exec, then the
    field code %% (a literal %)."""
    return [a.replace("%%", "%") for a in
            GLib.shell_parse_argv(app_info(entry).get_commandline())[1]]


@pytest.mark.parametrize("domain, escaped", [
    ("win10", "win10"),
    ('win 10 "$x%`\\', "win_2010_20_22_24x_25_60_5c"),
    ("-dash.é", "_2ddash_2e_c3_a9"),
])
def test_install_validates_and_starts_the_vm(home: Path, domain: str, escaped: str) -> None:
    out = client(home, "desktop-entry", "--", domain)
    assert out.returncode == 0, out.stderr
    desktop_id = f"io.github.gvtd1.vm-{escaped}"
    entry = home / APPS / f"{desktop_id}.desktop"
    icon = home / ICONS / f"{desktop_id}.svg"
    assert set(files(home)) == {str(APPS / entry.name), str(ICONS / icon.name)}
    assert f"wrote {entry}" in out.stdout and f"wrote {icon}" in out.stdout
    for path in (entry, icon, entry.parent, icon.parent):
        assert path.stat().st_uid == STRANGER  # written as the person, not as root
    validate(entry)
    expected = ["gvt-client", "view", "--start", *(["--"] if domain[0] == "-" else []),
                domain]
    assert argv(entry) == expected
    info = app_info(entry)
    assert info.get_name() == domain and info.get_string("Icon") == desktop_id
    assert info.get_string("X-Gvtd-Domain") == domain
    assert etree.fromstring(icon.read_bytes()).tag == "{http://www.w3.org/2000/svg}svg"
    before = files(home)
    assert client(home, "desktop-entry", "--", domain).returncode == 0  # again: the same
    assert files(home) == before


def test_session_flag_reaches_the_launcher(home: Path) -> None:
    assert client(home, "--session", "desktop-entry", "win10").returncode == 0
    assert argv(home / APPS / "io.github.gvtd1.vm-win10.desktop") == [
        "gvt-client", "--session", "view", "--start", "win10"]


def test_xdg_data_home_is_honoured_unless_relative(home: Path) -> None:
    data = home / "data"
    assert client(home, "desktop-entry", "w", env={"XDG_DATA_HOME": str(data)}).returncode == 0
    assert set(files(home)) == {"data/applications/io.github.gvtd1.vm-w.desktop",
                                "data/icons/hicolor/scalable/apps/io.github.gvtd1.vm-w.svg"}
    shutil.rmtree(data)
    assert client(home, "desktop-entry", "w", env={"XDG_DATA_HOME": "rel"}).returncode == 0
    assert set(files(home)) == {str(APPS / "io.github.gvtd1.vm-w.desktop"),
                                str(ICONS / "io.github.gvtd1.vm-w.svg")}


def test_remove_takes_away_exactly_what_it_installed(home: Path) -> None:
    assert client(home, "desktop-entry", "a").returncode == 0
    assert client(home, "desktop-entry", "b").returncode == 0
    (home / APPS / "firefox.desktop").write_text("[Desktop Entry]\n")
    keep = files(home)
    out = client(home, "desktop-entry", "a", "--remove")
    assert out.returncode == 0, out.stderr
    assert "removed" in out.stdout
    assert files(home) == {k: v for k, v in keep.items() if "vm-a." not in k}
    again = client(home, "desktop-entry", "a", "--remove")
    assert again.returncode == 1 and "There is no launcher for a" in again.stderr
    assert "Traceback" not in again.stderr


def test_remove_leaves_an_icon_someone_changed(home: Path) -> None:
    assert client(home, "desktop-entry", "a").returncode == 0
    icon = home / ICONS / "io.github.gvtd1.vm-a.svg"
    icon.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    assert client(home, "desktop-entry", "a", "--remove").returncode == 0
    assert set(files(home)) == {str(ICONS / icon.name)}


@pytest.mark.parametrize("text", ["[Desktop Entry]\nName=mine\n",
                                  "[Desktop Entry]\nX-Gvtd-Domain=other\n"])
def test_a_file_it_did_not_make_is_never_replaced_nor_removed(home: Path, text: str) -> None:
    entry = home / APPS / "io.github.gvtd1.vm-a.desktop"
    entry.parent.mkdir(parents=True)
    entry.write_text(text)
    before = files(home)
    for args in (("desktop-entry", "a"), ("desktop-entry", "a", "--remove")):
        out = client(home, *args)
        assert out.returncode == 1 and "is not the launcher" in out.stderr
        assert "stays; move it away by hand" in out.stderr and "Traceback" not in out.stderr
        assert files(home) == before


def test_a_foreign_icon_is_never_replaced(home: Path) -> None:
    icon = home / ICONS / "io.github.gvtd1.vm-a.svg"
    icon.parent.mkdir(parents=True)
    icon.write_text("mine")
    out = client(home, "desktop-entry", "a")
    assert out.returncode == 1 and "is not gvtd's icon" in out.stderr
    assert files(home) == {str(ICONS / icon.name): b"mine"}


@pytest.mark.parametrize("name", ["a/b", "new\nline", "x" * 201])
def test_bad_names_write_nothing(home: Path, name: str) -> None:
    out = client(home, "desktop-entry", name)
    assert out.returncode == 1 and "is not a libvirt domain name" in out.stderr
    assert "Nothing was changed" in out.stderr and files(home) == {}


def test_usage_and_help(home: Path) -> None:
    assert client(home, "desktop-entry").returncode == 2
    helped = client(home, "desktop-entry", "--help")
    assert helped.returncode == 0 and "--remove" in helped.stdout
    assert "XDG_DATA_HOME" in helped.stdout

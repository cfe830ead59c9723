"""`gvt-client desktop-entry`: a launcher in the person's application menu that starts a VM
through gvtd and opens its display.

The files are the user's own (the command runs as the user, never through the daemon):
a freedesktop desktop entry under $XDG_DATA_HOME/applications and its icon under
$XDG_DATA_HOME/icons/hicolor/scalable/apps, both written whole or not at all. Both carry
the domain's name (the entry's X-Gvtd-Domain key, the icon's own bytes), so `--remove`
takes away what this command installed and nothing a person or another program put there.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from gvtd import names

PREFIX = f"{names.BUS_NAME}.vm-"  # reverse DNS, so the file name is a valid desktop file id
MARKER = "X-Gvtd-Domain"
MAX_NAME = 200  # libvirt's own names are far shorter in practice; a file name has 255 bytes

ICON = """\
<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">
  <title>gvtd virtual machine</title>
  <rect x="4" y="8" width="56" height="38" rx="4" fill="#2b3a55"/>
  <rect x="9" y="13" width="46" height="28" rx="1" fill="#5fa8d3"/>
  <rect x="13" y="17" width="18" height="9" fill="#ffffff" opacity="0.85"/>
  <rect x="33" y="17" width="18" height="9" fill="#ffffff" opacity="0.6"/>
  <rect x="13" y="28" width="18" height="9" fill="#ffffff" opacity="0.6"/>
  <rect x="33" y="28" width="18" height="9" fill="#ffffff" opacity="0.85"/>
  <rect x="26" y="46" width="12" height="6" fill="#2b3a55"/>
  <rect x="16" y="52" width="32" height="4" rx="2" fill="#2b3a55"/>
</svg>
"""


class LauncherError(Exception):
    """A launcher that cannot be installed or removed; the sentence says why and what to do.
    Nothing was written or removed."""


@dataclass(frozen=True)
class Launcher:
    """Where one domain's launcher lives, and what it holds."""

    domain: str
    data_home: Path
    bus_flag: str = ""  # "--session" for a simulated daemon: the launcher talks to the same

    @property
    def desktop_id(self) -> str:
        return f"{PREFIX}{names.escape_path_element(self.domain)}"

    @property
    def entry(self) -> Path:
        return self.data_home / "applications" / f"{self.desktop_id}.desktop"

    @property
    def icon(self) -> Path:
        return self.data_home / "icons" / "hicolor" / "scalable" / "apps" / \
            f"{self.desktop_id}.svg"

    def text(self) -> str:
        """The desktop entry: specification version 1.4, the newest that Debian 12's
        desktop-file-validate knows."""
        command = ["gvt-client", *([self.bus_flag] if self.bus_flag else []), "view",
                   "--start", *(["--"] if self.domain.startswith("-") else []), self.domain]
        name = _string(self.domain)
        return "\n".join([
            "[Desktop Entry]",
            "Type=Application",
            "Version=1.4",
            f"Name={name}",
            "GenericName=Virtual machine",
            f"Comment=Start the virtual machine {name} and open its display",
            f"Exec={_string(' '.join(map(_exec_arg, command)))}",
            f"Icon={self.desktop_id}",
            "Terminal=false",
            "Categories=System;Emulator;",
            "Keywords=VM;virtual machine;Windows;GVT-g;",
            f"{MARKER}={name}",
            "",
        ])


def data_home(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """$XDG_DATA_HOME, or ~/.local/share when it is unset, empty or relative (the base
    directory specification says a relative path is to be ignored)."""
    value = env.get("XDG_DATA_HOME", "")
    if value and os.path.isabs(value):
        return Path(value)
    home = env.get("HOME", "")
    if not home or not os.path.isabs(home):
        raise LauncherError("Neither XDG_DATA_HOME nor HOME is an absolute path, so there "
                            "is no place for the launcher; set HOME. Nothing was written.")
    return Path(home) / ".local" / "share"


def check_name(domain: str) -> None:
    """The name goes into file contents and an Exec line: refuse what no domain is called."""
    if not domain or len(domain.encode()) > MAX_NAME or \
            any(ord(c) < 0x20 or c in "\x7f/" for c in domain):
        raise LauncherError(f"{domain[:40]!r} is not a libvirt domain name (it must be "
                            f"1 to {MAX_NAME} bytes, without / or control characters): give "
                            "the name `virsh list --all` shows. Nothing was changed.")


def install(launcher: Launcher) -> list[Path]:
    """Write the icon, then the entry that names it; the paths written. An entry or icon of
    the same name that this command did not make for the domain is left alone and refused."""
    from gvtd.config import atomic_write  # only here: the other commands do not need it

    check_name(launcher.domain)
    _owned(launcher, launcher.entry, must_exist=False)
    if launcher.icon.exists() and not _our_icon(launcher.icon):
        raise LauncherError(f"{launcher.icon} exists and is not gvtd's icon: move it away. "
                            "Nothing was written.")
    for path, text in ((launcher.icon, ICON), (launcher.entry, launcher.text())):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, text)
        except OSError as e:
            raise LauncherError(f"Cannot write {path}: {e.strerror}. Check that the "
                                "directory is yours and writable.") from None
    return [launcher.icon, launcher.entry]


def remove(launcher: Launcher) -> list[Path]:
    """Delete the entry this command installed for the domain, then its icon (only while it
    is still gvtd's); the paths removed."""
    check_name(launcher.domain)
    _owned(launcher, launcher.entry, must_exist=True)
    launcher.entry.unlink()
    if not _our_icon(launcher.icon):
        return [launcher.entry]
    launcher.icon.unlink()
    return [launcher.entry, launcher.icon]


def _our_icon(path: Path) -> bool:
    try:
        return path.is_file() and path.read_text(encoding="utf-8", errors="replace") == ICON
    except OSError:
        return False


def _owned(launcher: Launcher, path: Path, must_exist: bool) -> None:
    """Refuse unless path is absent (when allowed) or this domain's launcher."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        if must_exist:
            raise LauncherError(f"There is no launcher for {launcher.domain} ({path} does "
                                "not exist); nothing was removed.") from None
        return
    except OSError as e:
        raise LauncherError(f"Cannot read {path}: {e.strerror}.") from None
    marker = re.search(rf"^{MARKER}=(.*)$", text, re.MULTILINE)
    if marker is None or marker.group(1) != _string(launcher.domain):
        what = "removed" if must_exist else "written"
        raise LauncherError(f"{path} is not the launcher `gvt-client desktop-entry` made for "
                            f"{launcher.domain} (no {MARKER}={launcher.domain} in it), so it "
                            f"stays; move it away by hand. Nothing was {what}.")


def _string(value: str) -> str:
    """A value of type string, its backslashes escaped (check_name lets no control
    character through, so they are all there is to escape)."""
    return value.replace("\\", "\\\\")


_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def _exec_arg(arg: str) -> str:
    """One Exec argument: quoted unless plain, and inside quotes ", `, $ and \\ escaped; %
    doubled, since a single one starts a field code."""
    arg = arg.replace("%", "%%")
    if _PLAIN.fullmatch(arg):
        return arg
    return '"' + re.sub(r'(["`$\\])', r"\\\1", arg) + '"'

"""Other tools' configuration files, read as those tools read them, under a root directory.

modprobe, systemd-tmpfiles and udev all take drop-in files from a list of directories, in
that list's order: a file name in an earlier directory hides the same name in a later one,
and a file that is empty or a link to /dev/null masks it. Doctor reads these (and
sysfsutils' and driverctl's files) to say what else on the host sets a GPU's VFs or keeps
its driver from loading. Everything is read under a root (`/`, or the emulated host's
tree); nothing here writes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_MAX = 1 << 20  # a configuration file larger than this is read up to here

MODPROBE_DIRS = ("/etc/modprobe.d", "/run/modprobe.d", "/usr/local/lib/modprobe.d",
                 "/usr/lib/modprobe.d", "/lib/modprobe.d")
TMPFILES_DIRS = ("/etc/tmpfiles.d", "/run/tmpfiles.d", "/usr/local/lib/tmpfiles.d",
                 "/usr/lib/tmpfiles.d", "/lib/tmpfiles.d")
UDEV_DIRS = ("/etc/udev/rules.d", "/run/udev/rules.d", "/usr/local/lib/udev/rules.d",
             "/usr/lib/udev/rules.d", "/lib/udev/rules.d")
SYSFS_CONF = "/etc/sysfs.conf"  # sysfsutils: attribute = value, paths relative to /sys
SYSFS_DIR = "/etc/sysfs.d"
DRIVERCTL_DIR = "/etc/driverctl.d"  # driverctl: one file BUS-DEVICE holding the driver


@dataclass(frozen=True)
class Line:
    """One configuration line: the file it is in (under the root), its number, its text
    without the comment, continuation lines joined, and whether every user may read the
    file (doctor answers any local user: it quotes only what they could read themselves)."""

    file: Path
    number: int
    text: str
    public: bool = True

    @property
    def where(self) -> str:
        return f"{self.file}:{self.number}"

    @property
    def shown(self) -> str:
        """The line as a finding quotes it: its text, or only where it is."""
        return f"{self.where}: {self.text}" if self.public else \
            f"{self.where} (a file only root may read)"


def read_bytes(path: Path, limit: int = TEXT_MAX) -> bytes | None:
    """A regular file's first `limit` bytes; None when it is missing, unreadable or not a
    regular file (a FIFO or device would block or never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_text(path: Path) -> str | None:
    data = read_bytes(path)
    return None if data is None else data.decode("utf-8", errors="replace")


def world_readable(path: Path) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


def under(root: Path, path: str) -> Path:
    """path (absolute on the host) inside root."""
    return root / path.lstrip("/")


def _masked(path: Path) -> bool:
    try:
        return os.readlink(path) == "/dev/null"
    except OSError:
        return False


def drop_ins(root: Path, dirs: tuple[str, ...], suffix: str) -> list[Path]:
    """The files a tool reads from dirs, sorted by name, each name from the first
    directory that has it; masked names are left out."""
    chosen: dict[str, Path] = {}
    for d in dirs:
        try:
            names = os.listdir(under(root, d))
        except OSError:
            continue
        for name in names:
            if name.endswith(suffix) and name not in chosen:
                chosen[name] = under(root, d) / name
    return [p for _, p in sorted(chosen.items()) if not _masked(p)]


def lines(files: list[Path], comment: str = "#") -> Iterator[Line]:
    """Every non-empty line of files, without comments, a trailing backslash joining the
    next line (as modprobe and udev read them)."""
    for path in files:
        text = read_text(path)
        if text is None:
            continue
        public = world_readable(path)
        held, start = "", 0
        for number, raw in enumerate(text.splitlines(), 1):
            if not held and raw.lstrip().startswith(comment):
                continue
            if raw.endswith("\\"):
                held, start = held + raw[:-1], start or number
                continue
            full, first = held + raw, start or number
            held, start = "", 0
            if full.strip():
                yield Line(path, first, full.strip(), public)


# -- modprobe.d ----------------------------------------------------------------------------

def modprobe_lines(root: Path) -> list[Line]:
    return list(lines(drop_ins(root, MODPROBE_DIRS, ".conf")))


def blocked_by_modprobe(root: Path, module: str) -> list[Line]:
    """modprobe.d lines that keep `module` from loading: `blacklist M` (no loading by
    alias, which is how udev loads a GPU driver at boot) or `install M /bin/false`."""
    out = []
    for line in modprobe_lines(root):
        words = line.text.split()
        if len(words) >= 2 and words[1].replace("-", "_") == module:
            if words[0] == "blacklist" or (
                    words[0] == "install" and len(words) >= 3
                    and os.path.basename(words[2]) in ("false", "true")):
                out.append(line)
    return out


def modprobe_options(root: Path, module: str) -> dict[str, tuple[str, Line]]:
    """`options M key=value` from modprobe.d: {key: (value, line)}, the last one winning."""
    out: dict[str, tuple[str, Line]] = {}
    for line in modprobe_lines(root):
        words = line.text.split()
        if len(words) >= 3 and words[0] == "options" and words[1].replace("-", "_") == module:
            for word in words[2:]:
                key, _, value = word.partition("=")
                out[key.replace("-", "_")] = (value.strip('"'), line)
    return out


# -- what else writes VF counts and drivers -------------------------------------------------

def tmpfiles_writes(root: Path) -> list[Line]:
    """tmpfiles.d `w` lines (w, w+, with modifiers): what systemd-tmpfiles writes at boot."""
    return [line for line in lines(drop_ins(root, TMPFILES_DIRS, ".conf"))
            if line.text.startswith("w")]  # w, or w+ and its other modifiers


def sysfsutils_writes(root: Path) -> list[Line]:
    """sysfsutils' `attribute = value` lines (not its `mode` and `owner` lines)."""
    files = [under(root, SYSFS_CONF)] + sorted(under(root, SYSFS_DIR).glob("*.conf"))
    return [line for line in lines(files)
            if "=" in line.text and line.text.split()[0] not in ("mode", "owner")]


def udev_lines(root: Path) -> list[Line]:
    return list(lines(drop_ins(root, UDEV_DIRS, ".rules")))


def driverctl_overrides(root: Path) -> dict[str, Line]:
    """driverctl's saved overrides of PCI devices: {address: the file's line (the driver)}."""
    out: dict[str, Line] = {}
    d = under(root, DRIVERCTL_DIR)
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return out
    for name in names:
        if name.startswith("pci-"):
            text = read_text(d / name)
            if text is not None:
                out[name[len("pci-"):].lower()] = Line(d / name, 1, text.strip(),
                                                       world_readable(d / name))
    return out

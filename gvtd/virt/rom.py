"""The option ROM file a VF's hostdev may name (<rom file='...'/>, AttachVGPU's `rom`).

QEMU reads that file when the domain starts and gives it to the guest as the device's ROM,
and libvirt runs as root: through gvtd a caller could otherwise hand their guest any file
QEMU's user can read, such as another domain's disk or NVRAM under /var/lib/libvirt, which
libvirt makes QEMU's while that domain runs. So gvtd accepts only a ROM that every user of
the host may read already and that nobody but root can change or replace until QEMU opens
it: a regular file under /usr/share (where packages put firmware: /usr/share/kvm,
/usr/share/qemu), owned by root and readable by all, on a path of root's directories that
all may enter. The XML gets the real path, symbolic links (root's, in there) resolved. See
docs/security.md.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gvtd.errors import InvalidArgument, NotFound

ROM_DIRS = ("/usr/share/",)
INSTALL = "sudo install -m 644 -D FILE /usr/share/kvm/FILE"


def _root_only(st: os.stat_result) -> bool:
    """Nobody but root can change what this names: root's, and writable by others only
    when sticky (others may not replace entries they do not own; each one is checked)."""
    open_to_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    return st.st_uid == 0 and (not open_to_others or bool(st.st_mode & stat.S_ISVTX))


def check_rom(path: str, dirs: tuple[str, ...] = ROM_DIRS) -> str:
    """The real path of a ROM file anyone may read and only root may change, or a named
    refusal. In a worker thread: it stats the caller's path."""
    if not os.path.isabs(path):
        raise InvalidArgument(f"rom {path[:200]!r} is not an absolute path.")
    # The path as given first: nothing outside the public directories is looked at, so no
    # answer tells the caller where a link they could not read leads, or whether it exists
    given = os.path.normpath(path)
    real = os.path.realpath(given) if given.startswith(dirs) else given
    shown = path[:200] if real == path else f"{path} ({real})"
    if not real.startswith(dirs):
        raise InvalidArgument(
            f"The ROM {shown} is not under {' or '.join(dirs)}: gvtd gives a VM only a ROM "
            "file every user may read and only root may change, so that nobody hands their "
            f"VM a file they could not read themselves. Install it there ({INSTALL}).")
    try:
        st = os.stat(real)
    except OSError as e:
        raise NotFound(f"There is no ROM {shown} ({e.strerror}).") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"The ROM {shown} is not a regular file; give the ROM file "
                              "itself.")
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or \
            not st.st_mode & stat.S_IROTH:
        raise InvalidArgument(
            f"The ROM {shown} (owner uid {st.st_uid}, mode {stat.filemode(st.st_mode)}) must "
            "be root's, writable by root alone and readable by all, so that what the VM "
            f"gets is what anyone may read: {INSTALL}.")
    for d in Path(real).parents:
        ds = os.stat(d)
        if not _root_only(ds) or not ds.st_mode & stat.S_IXOTH:
            raise InvalidArgument(
                f"The ROM {shown} is in {d} (owner uid {ds.st_uid}, mode "
                f"{stat.filemode(ds.st_mode)}), which someone other than root may change or "
                f"not everyone may enter: {INSTALL}.")
    return real

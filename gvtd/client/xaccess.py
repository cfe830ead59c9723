"""Whether an X display lets QEMU's user in, seen from the desktop session that owns it.

A gtk-gl VM's QEMU opens its window on the desktop's X display as libvirt's QEMU user. The
daemon cannot see the X server's access list (it has no cookie and no access to the
session); the person's own session can: `xhost` lists it. `gvt-client doctor` run there
turns the daemon's "needs access" finding into what the list actually says.
"""

from __future__ import annotations

import os
import subprocess

XHOST_TIMEOUT = 5.0


def same_display(a: str, b: str) -> bool:
    """:0 and :0.0 are one X server; host:0 is another one."""
    return a.partition(".")[0] == b.partition(".")[0] if a.startswith(":") else a == b


def xhost_list(display: str) -> str | None:
    """`xhost`'s output for display, or None when it cannot open it or is not installed."""
    try:
        proc = subprocess.run(["xhost"], env=dict(os.environ, DISPLAY=display),
                              capture_output=True, text=True, timeout=XHOST_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def verdict(listing: str, user: str, display: str) -> tuple[str, str, str]:
    """(severity, message, fix) from `xhost`'s listing of display for QEMU's user."""
    lines = [line.strip() for line in listing.splitlines()]
    entries = {line.lower() for line in lines[1:] if line}
    only_user = f"xhost si:localuser:{user}"
    if lines and "access control disabled" in lines[0]:
        return ("warn", f"X display {display} has access control off (`xhost +`): {user} can "
                "open it, but so can every user and every host that reaches it.",
                f"Run `xhost -` and `{only_user}` instead.")
    if f"si:localuser:{user}".lower() in entries:
        return ("pass", f"X display {display} lets {user} in (SI:localuser:{user}), so QEMU "
                "can open its gtk-gl window.", "")
    if "local:" in entries:
        return ("warn", f"X display {display} lets every local user in (`xhost +local:`), "
                f"{user} among them.", f"Run `xhost -local:` and `{only_user}` instead.")
    return ("warn", f"X display {display} does not let {user} in: QEMU will fail to open its "
            "gtk-gl window (\"cannot open display\").",
            f"Run `{only_user}` in this session (after every login: put it in the "
            "session's autostart). Never `xhost +`: it lets every user and every host that "
            "reaches the display open windows on it and read what you type.")


def recheck(check_id: str, severity: str, message: str, fix: str) -> tuple[str, str, str]:
    """The daemon's x-access:USER@DISPLAY finding, checked against this session's display
    when it is the one; unchanged otherwise."""
    user, _, display = check_id.partition(":")[2].rpartition("@")
    mine = os.environ.get("DISPLAY", "")
    if not user or not mine or not same_display(mine, display):
        return severity, message, fix
    listing = xhost_list(display)
    if listing is None:
        return ("warn", f"{message} (xhost could not list X display {display}'s access: is "
                "x11-xserver-utils installed?)", fix)
    return verdict(listing, user, display)

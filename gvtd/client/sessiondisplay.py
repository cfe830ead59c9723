"""Which GL display works in the desktop session `gvt-client doctor` runs in, and why.

The daemon cannot see a desktop (it runs as root, outside every session); doctor run in the
session can: its environment says whether it is Wayland or X11, and `xhost` says whether its
X display (the session's own, or Xwayland's on Wayland) opens. spice-gl works in both (the
viewer, virt-viewer, is an ordinary client of the session); gtk-gl is QEMU's GTK window, an X
client, so on Wayland it needs Xwayland: GTK's Wayland backend lacks the DMA-BUF path QEMU
needs ("GtkGLArea console lacks DMABUF support").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gvtd.client import xaccess

CHECK_ID = "display-session"
SPICE = "spice-gl works (virt-viewer shows the VM's GL display in this session)"
START_HERE = "gvtd gives QEMU this session's display when you start the VM from here"


def check(env: Mapping[str, str],
          opens: Callable[[str], bool] = lambda d: xaccess.xhost_list(d) is not None
          ) -> tuple[str, str, str, str] | None:
    """(id, severity, message, fix) for the session whose environment env is; None
    outside a desktop session."""
    kind = env.get("XDG_SESSION_TYPE", "")
    wayland = env.get("WAYLAND_DISPLAY", "")
    display = env.get("DISPLAY", "")
    x = display if display and opens(display) else ""
    if kind == "wayland" or (wayland and kind != "x11"):
        if x:
            return (CHECK_ID, "pass", f"This is a Wayland session: {SPICE}; gtk-gl works "
                    f"under Xwayland (X display {x}), where QEMU's own window opens: "
                    f"{START_HERE}.", "")
        return (CHECK_ID, "warn", f"This is a Wayland session without a usable Xwayland "
                f"(DISPLAY {display or 'unset'}{' does not open' if display else ''}): "
                f"{SPICE}; gtk-gl does not (QEMU's GTK window is an X client, and GTK on "
                "Wayland lacks the DMA-BUF path: \"GtkGLArea console lacks DMABUF support\").",
                "Attach with --display spice-gl (the default) and view the VM with "
                "virt-viewer, or turn Xwayland on in your compositor for gtk-gl.")
    if x:
        return (CHECK_ID, "pass", f"This is an X11 session on {x}: {SPICE}, and so does "
                f"gtk-gl (QEMU's own window): {START_HERE}.", "")
    if display or kind == "x11":
        return (CHECK_ID, "warn", f"X display {display or '(DISPLAY unset)'} does not open "
                "from this session (xhost cannot list it), so neither GL display can be "
                "shown here.", "Run gvt-client doctor from a terminal of your desktop session.")
    return None  # not run in a desktop session (ssh, a console): nothing to say about one

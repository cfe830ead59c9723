"""What QEMU needs from the caller's desktop session to show a GL display there.

libvirt runs QEMU as its own system user with an environment of its own, so a display that
QEMU draws on the desktop (gtk-gl: QEMU's GTK window; spice-gl: a render node, shown by
virt-viewer in the session) gets what it needs from the session at each start:

- gtk-gl: DISPLAY, the session's X display (its Xwayland's on Wayland, with GDK_BACKEND=x11:
  GTK's own Wayland backend lacks the DMA-BUF path QEMU needs), GDK_SCALE=1.0 (QEMU's HiDPI
  scaling is broken), no session bus for GTK to launch (NO_BUS), and access to that display
  for QEMU's user alone: `xhost +si:localuser:USER` run as the session's user, with the
  session's own credentials (its Xauthority in its runtime directory or home), never as root
  and never `xhost +`; taken back when the VM stops (Desktop.stopped).
- both: on a machine with a second, non-Intel GPU, glvnd's EGL vendor pinned to Mesa, so
  that QEMU's EGL renders on the Intel node the vGPU uses and not on the other vendor's
  library ("vfio-display-dmabuf: opengl not available").

The environment goes into the XML a start hands libvirt (virDomainCreateXML on the defined
domain): libvirt takes QEMU's environment only from <qemu:commandline><qemu:env>, and a
start with XML changes the running definition alone, so the persistent one is not
rewritten at every start and a `virsh edit` meanwhile is not lost.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import pwd
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gvtd.errors import Failed, NotFound
from gvtd.mdev import list_dir, parse_int, read_attr
from gvtd.session import Logind, Session
from gvtd.virt import domxml

log = logging.getLogger(__name__)

GL = Literal["gtk-gl", "spice-gl"]
INTEL_VENDOR = 0x8086
# Debian's (and Fedora's, Arch's) glvnd vendor file for Mesa.
MESA_EGL = Path("/usr/share/glvnd/egl_vendor.d/50_mesa.json")
EGL_VENDOR_ENV = "__EGL_VENDOR_LIBRARY_FILENAMES"
XHOST_TIMEOUT = 5.0
# QEMU's user has no session bus; without an address GTK's accessibility bridge autolaunches
# one (a spawn), and libvirt's seccomp sandbox (spawn=deny) kills QEMU for it: "disabled:"
# names no bus, so nothing is launched.
NO_BUS = "disabled:"
USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?")
# Where a session's X cookie lives, under its runtime directory (GDM's X11 sessions,
# mutter's and KDE's Xwayland); `None` is xhost's own default, ~/.Xauthority (startx,
# LightDM), and also covers a server that lets the user in by SI:localuser (GDM does).
XAUTHORITIES = (None, "gdm/Xauthority", ".mutter-Xwaylandauth.*", "xauth_*")


def gl_display(xml: str) -> GL | None:
    """Which GL display the domain XML uses, or None (vnc, none, no vGPU display)."""
    if domxml.gtk_display(xml) is not None:
        return "gtk-gl"
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    return "spice-gl" if root.find("devices/graphics[@type='spice']/gl[@enable='yes']") \
        is not None else None


def other_gpus(sysfs: Path) -> list[str]:
    """Render nodes of GPUs that are not Intel's (renderD129 of an NVIDIA laptop GPU)."""
    drm = sysfs / "class" / "drm"
    return [n for n in list_dir(drm) if n.startswith("renderD") and
            parse_int(read_attr(drm / n / "device" / "vendor"), 16) not in (None, INTEL_VENDOR)]


def qemu_env(kind: GL, session: Session, second_gpu: bool, mesa: Path | None) -> dict[str, str]:
    """QEMU's environment for this start."""
    env: dict[str, str] = {}
    if kind == "gtk-gl":
        env.update(DISPLAY=session.x_display, GDK_SCALE="1.0", GDK_BACKEND="x11",
                   DBUS_SESSION_BUS_ADDRESS=NO_BUS)
    if second_gpu and mesa is not None:
        env[EGL_VENDOR_ENV] = str(mesa)
    return env


def with_env(xml: str, env: dict[str, str]) -> str:
    """The domain XML with these <qemu:env> entries set (one per name), the rest kept."""
    root = domxml.parse(xml)
    cmd = root.find(domxml.Q + "commandline")
    if cmd is None:
        override = root.find(domxml.Q + "override")
        cmd = domxml.add(root, domxml.Q + "commandline",
                         index=root.index(override) if override is not None else None)
    for name, value in env.items():
        found = [e for e in cmd.findall(domxml.Q + "env") if e.get("name") == name]
        for extra in found[1:]:
            domxml.remove(extra)
        if found:
            found[0].set("value", value)
        else:
            domxml.add(cmd, domxml.Q + "env", {"name": name, "value": value})
    return domxml.serialize(root)


def xauthorities(session: Session) -> list[str | None]:
    """The session's X cookie files that exist (names only: xhost reads them as the user)."""
    out: list[str | None] = []
    for pattern in XAUTHORITIES:
        if pattern is None:
            out.append(None)
        else:
            out += sorted(glob.glob(os.path.join(glob.escape(session.runtime_path), pattern)))
    return out


@dataclass
class Grant:
    """X access gvtd gave QEMU's user for one running domain; `added`: the entry was not
    there before, so it goes when the last domain that needs it stops."""

    session: Session
    qemu_user: str
    xauthority: str | None
    added: bool

    def same_display(self, other: Grant) -> bool:
        return (self.session.uid, self.session.x_display, self.qemu_user) == \
            (other.session.uid, other.session.x_display, other.qemu_user)


async def xhost(session: Session, args: list[str],
                xauthority: str | None) -> tuple[int, str, str]:
    """xhost as the session's user (its uid, gid and groups, no new privileges), with only
    the session's display and cookie in its environment: (status, output, errors)."""
    try:
        pw = pwd.getpwuid(session.uid)
    except KeyError:
        raise Failed(f"uid {session.uid} of session {session.id} has no passwd entry.") from None
    env = {"PATH": "/usr/bin:/bin", "DISPLAY": session.x_display, "HOME": pw.pw_dir,
           "USER": pw.pw_name, "LOGNAME": pw.pw_name, "XDG_RUNTIME_DIR": session.runtime_path}
    if xauthority is not None:
        env["XAUTHORITY"] = xauthority
    proc = await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={session.uid}", f"--regid={pw.pw_gid}", "--init-groups",
        "--no-new-privs", "--", "xhost", *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd="/")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), XHOST_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, "", f"xhost did not finish within {XHOST_TIMEOUT:.0f} s"
    return (proc.returncode or 0, out.decode(errors="replace"),
            " ".join(err.decode(errors="replace").split()))


async def grant_x(session: Session, qemu_user: str) -> Grant:
    """Let QEMU's user (only it) open the session's X display, in the session's credentials."""
    if not USER_RE.fullmatch(qemu_user):
        raise Failed(f"QEMU's user {qemu_user[:40]!r} is not a user name; check qemu.conf's "
                     "user and the domain's <seclabel model='dac'>.")
    entry = f"si:localuser:{qemu_user}"
    why = ""
    for xauthority in xauthorities(session):
        status, listing, why = await xhost(session, [], xauthority)
        if status != 0:
            continue
        there = entry in {line.strip().lower() for line in listing.splitlines()}
        if not there:
            status, _, why = await xhost(session, [f"+{entry}"], xauthority)
        if status == 0:
            log.info("X display %s of session %s (%s) lets %s in", session.x_display,
                     session.id, session.user, qemu_user)
            return Grant(session, qemu_user, xauthority, added=not there)
    raise Failed(f"gvtd could not let {qemu_user} open X display {session.x_display} of your "
                 f"session {session.id} (xhost as {session.user}: {why[:200] or 'failed'}). "
                 f"Run `xhost +{entry}` in the session and start again.")


class Desktop:
    """Gives a GL domain's start what the caller's session needs (see the module)."""

    def __init__(self, logind: Logind, sysfs: Path, mesa: Path = MESA_EGL) -> None:
        self.logind = logind
        self.sysfs = sysfs
        self.mesa = mesa
        self.grants: dict[str, Grant] = {}  # by running domain

    async def stopped(self, name: str) -> None:
        """The domain is off: take back the X access its start added, unless another
        running domain still needs it (that one takes it over). Best effort: after a
        logout the display is gone and nothing is left to take back."""
        grant = self.grants.pop(name, None)
        if grant is None or not grant.added:
            return
        other = next((g for g in self.grants.values() if g.same_display(grant)), None)
        if other is not None:
            other.added = True
            return
        status, _, why = await xhost(grant.session, [f"-si:localuser:{grant.qemu_user}"],
                                     grant.xauthority)
        if status:
            log.info("Could not take back %s's access to X display %s: %s", grant.qemu_user,
                     grant.session.x_display, why)

    async def start_xml(self, name: str, xml: str, uid: int, qemu_user: str) -> str | None:
        """The XML to start with for uid's session, or None when the display is not GL
        (started as it is, with no session). Errors before anything is changed when uid
        has no graphical session."""
        kind = gl_display(xml)
        if kind is None:
            return None
        session = await self.logind.session_of(uid)
        if kind == "gtk-gl":
            if not session.x_display:
                why = "no Xwayland running as you" if session.type == "wayland" else \
                    "logind names no X display for it"
                raise NotFound(f"QEMU's own window (gtk-gl) needs an X display, and your "
                               f"{session.type} session {session.id} has none ({why}). "
                               "Attach the VM with --display spice-gl and view it with "
                               "virt-viewer, which works on Wayland too, or enable Xwayland.")
            self.grants[name] = await grant_x(session, qemu_user)
        second = await asyncio.to_thread(other_gpus, self.sysfs)
        mesa = self.mesa if second and await asyncio.to_thread(self.mesa.is_file) else None
        env = qemu_env(kind, session, bool(second), mesa)
        log.info("Starting with session %s of %s (%s, seat %s): %s", session.id, session.user,
                 session.type, session.seat, " ".join(f"{k}={v}" for k, v in env.items()))
        return with_env(xml, env) if env else None

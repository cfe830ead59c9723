"""The caller's desktop session, as systemd-logind knows it.

A GL display (gtk-gl, spice-gl) shows the VM on somebody's desktop, and that desktop changes
with every login: its X display number, its type (X11 or Wayland), its runtime directory.
gvtd asks logind at each start, for the sessions of the uid the bus says is calling, never
for one the caller names, and picks the active local graphical one on a seat.

What logind reports is checked before it is used: an X display must be a local one (`:N` or
`:N.S`), a runtime directory a real directory (not a symbolic link) owned by the session's
uid. On Wayland logind's Display is usually empty; the session's Xwayland is then the X
socket in /tmp/.X11-unix that the session's uid owns (Xwayland and the compositor that
starts it run as the user; an X server run by root or a display manager owns its socket as
that user instead). With two Wayland sessions of one user this cannot tell their Xwaylands
apart and takes the lowest display.

logind lives on the system bus whichever bus gvtd serves (simulation), so this module keeps a
system bus connection of its own, opened at the first lookup and again after it is lost.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from pydantic import BaseModel, ConfigDict

from gvtd.errors import Failed, NotFound

LOGIND = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
MANAGER = "org.freedesktop.login1.Manager"
SESSION = "org.freedesktop.login1.Session"
USER = "org.freedesktop.login1.User"
PROPERTIES = "org.freedesktop.DBus.Properties"
TIMEOUT = 10.0  # seconds for one logind answer

X_DISPLAY_RE = re.compile(r":[0-9]{1,5}(\.[0-9]{1,3})?")
X11_UNIX = Path("/tmp/.X11-unix")
GRAPHICAL = ("x11", "wayland")
Kind = Literal["x11", "wayland"]


class Seen(BaseModel):
    """One logind session, as its properties read (the edge: logind's values, unchecked)."""

    model_config = ConfigDict(frozen=True)

    id: str
    uid: int
    user: str
    seat: str = ""
    type: str = ""
    display: str = ""
    remote: bool = False
    active: bool = False
    state: str = ""
    session_class: str = ""
    runtime_path: str = ""


class Session(BaseModel):
    """The graphical session a start uses, with values fit for XML and a command line."""

    model_config = ConfigDict(frozen=True)

    id: str
    uid: int
    user: str
    seat: str
    type: Kind
    x_display: str  # where an X client (QEMU's GTK window) goes: the session's, or Xwayland's
    runtime_path: str


def graphical(s: Seen) -> bool:
    return s.type in GRAPHICAL and not s.remote and bool(s.seat) and \
        s.session_class in ("user", "") and s.state != "closing"


def choose(uid: int, seen: list[Seen]) -> Seen:
    """The session of uid a start shows its VM in: the active local graphical one on a seat
    (else an online one). NotFound that says why when uid has none."""
    mine = sorted((s for s in seen if s.uid == uid and graphical(s)),
                  key=lambda s: (not s.active, s.state != "active", s.id))
    if mine:
        return mine[0]
    others = [s for s in seen if s.uid != uid and graphical(s) and s.active]
    own = [s for s in seen if s.uid == uid]
    if own:
        kinds = ", ".join(sorted({f"{s.type or 'unknown'}"
                                  f"{' (remote)' if s.remote else ''}" for s in own}))
        why = f"your sessions (uid {uid}) are {kinds}, none of them a local graphical one"
    elif uid == 0:
        why = "root has no desktop session (run gvt-client start as yourself, not with sudo)"
    else:
        why = f"you (uid {uid}) have no session at all"
    if others:
        o = others[0]
        why += f"; the graphical session on {o.seat} is {o.user}'s, and a VM is never shown " \
               "in another user's session"
    raise NotFound(f"This VM shows its display on your desktop, but logind says {why}. "
                   "Start it from your own desktop session (X11 or Wayland), or attach it "
                   "with --display vnc to start it without one.")


def checked(s: Seen, x11_unix: Path = X11_UNIX) -> Session:
    """Session from what logind said, after checking every value that goes on."""
    runtime = s.runtime_path
    try:
        st = os.lstat(runtime) if runtime.startswith("/") and ".." not in runtime else None
    except OSError:
        st = None
    if st is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != s.uid:
        raise Failed(f"logind gives session {s.id} of {s.user} the runtime directory "
                     f"{runtime[:80]!r}, which is not a directory of {s.user}'s; log in again.")
    if s.type == "x11":
        display = s.display
    else:  # Wayland: logind has no X display; the session's Xwayland may have one
        display = s.display or xwayland_display(s.uid, x11_unix)
    if display and not X_DISPLAY_RE.fullmatch(display):
        raise Failed(f"logind gives session {s.id} the X display {display[:40]!r}, which is "
                     "not a local X display like :0; nothing was started.")
    return Session(id=s.id, uid=s.uid, user=s.user, seat=s.seat, type=s.type,  # type: ignore[arg-type]
                   x_display=display, runtime_path=runtime)


def xwayland_display(uid: int, x11_unix: Path = X11_UNIX) -> str:
    """The lowest X display whose socket uid owns (its Xwayland), or ""."""
    numbers = []
    try:
        entries = list(os.scandir(x11_unix))
    except OSError:
        return ""
    for e in entries:
        if e.name[:1] == "X" and e.name[1:].isdigit():
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISSOCK(st.st_mode) and st.st_uid == uid:
                numbers.append(int(e.name[1:]))
    return f":{min(numbers)}" if numbers else ""


class Logind:
    """logind's sessions over gvtd's own system bus connection; async, never blocking."""

    def __init__(self, bus_address: str | None = None) -> None:
        self.bus_address = bus_address
        self._bus: MessageBus | None = None
        self._connecting = asyncio.Lock()

    async def _connected(self) -> MessageBus:
        async with self._connecting:
            if self._bus is None or not self._bus.connected:
                try:
                    self._bus = await MessageBus(
                        bus_address=self.bus_address,
                        bus_type=BusType.SYSTEM).connect()
                except Exception as e:
                    raise Failed(f"gvtd cannot reach logind: the system bus is unreachable "
                                 f"({e}).") from e
            return self._bus

    async def _call(self, path: str, iface: str, member: str, signature: str = "",
                    body: list[Any] | None = None) -> Any:
        bus = await self._connected()
        try:
            reply = await asyncio.wait_for(bus.call(Message(
                destination=LOGIND, path=path, interface=iface, member=member,
                signature=signature, body=body or [])), TIMEOUT)
        except asyncio.TimeoutError:
            raise Failed("logind did not answer within 10 s; nothing was started.") from None
        if reply is None or reply.message_type == MessageType.ERROR:
            why = reply.error_name if reply is not None else "no reply"
            raise Failed(f"gvtd cannot ask logind for the desktop session ({why}): is "
                         "systemd-logind running?")
        return reply.body

    async def _props(self, path: str, iface: str) -> dict[str, Any]:
        (props,) = await self._call(path, PROPERTIES, "GetAll", "s", [iface])
        return {k: v.value for k, v in props.items()}

    async def sessions(self, uid: int) -> list[Seen]:
        """Every session logind has, with properties read for uid's own and the active
        graphical ones on a seat (the others only make NotFound's sentence)."""
        (rows,) = await self._call(LOGIND_PATH, MANAGER, "ListSessions")
        out = []
        for sid, s_uid, user, seat, path in rows:
            p = await self._props(path, SESSION)
            runtime = ""
            if s_uid == uid:
                user_path = p.get("User", [0, ""])[1]
                if user_path:
                    runtime = str((await self._props(user_path, USER)).get("RuntimePath", ""))
            out.append(Seen(id=sid, uid=s_uid, user=user, seat=seat,
                            type=str(p.get("Type", "")), display=str(p.get("Display", "")),
                            remote=bool(p.get("Remote", False)),
                            active=bool(p.get("Active", False)),
                            state=str(p.get("State", "")),
                            session_class=str(p.get("Class", "")), runtime_path=runtime))
        return out

    async def session_of(self, uid: int) -> Session:
        """The caller's graphical session, checked (see the module's docstring)."""
        return await asyncio.to_thread(checked, choose(uid, await self.sessions(uid)))

    def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

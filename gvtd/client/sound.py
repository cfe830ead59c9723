"""The person's own session lets QEMU's user reach its sound server, through one socket.

gvtd wires a domain's sound to names.sound_socket(uid) of the caller (gvtd/virt/audio.py);
the daemon cannot open that socket, nor should it: the socket belongs to the user's sound
server, and gvtd (without CAP_DAC_*) cannot enter the user's 0700 runtime directory.
gvt-client runs as that user, in that session, and makes the grant with the user's own
rights:

- PulseAudio opens a second native-protocol socket, `module-native-protocol-unix` with
  `auth-group=` the group of QEMU's user and `auth-cookie-enabled=0`: the server lets in
  only processes of that group (the kernel vouches for the peer's credentials) besides
  the user; no cookie, no anonymous access. The user's main socket stays as it was.
- PipeWire's pulse server (pipewire-pulse) has no module for a second socket and no
  auth-group, so a second server of its kind, a client of the user's own PipeWire, serves
  the socket: `pipewire -c` with gvtd's configuration (gvtd/data/pipewire-sound.conf),
  started here in a session of its own and handed the socket this process bound (systemd
  socket activation), so the socket answers the moment this returns. Any process that
  reaches the socket is let in: the file system is the only gate, and the socket itself
  is 0600 with one ACL entry, read and write for QEMU's user.
- The socket's directory (`gvtd-sound`, mode 0700) and the runtime directory above it get
  one ACL entry each, search (x) for QEMU's user alone: it can reach the socket by its name
  and list nothing.

A restart of the sound server (a new login) forgets the socket, and QEMU refuses to start
when it does not answer: `gvt-client start` (and attach) make the grant again when it is
missing. Every step is idempotent.
"""

from __future__ import annotations

import asyncio
import grp
import importlib.resources
import os
import pwd
import re
import shutil
import socket as sockets
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gvtd import names

if TYPE_CHECKING:
    from gvtd.client.main import Client

TIMEOUT = 10.0
MODULE = "module-native-protocol-unix"
# Started with the bound socket on fd 3 and LISTEN_PID naming itself, as systemd would.
ACTIVATE = 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@" 3<&0 0</dev/null'


class SoundError(Exception):
    """The grant cannot be made in this session; the sentence says what to do."""


@dataclass(frozen=True)
class Grant:
    """QEMU's user, and the socket it must reach."""

    user: str
    socket: Path

    @classmethod
    def parse(cls, text: str) -> Grant | None:
        """From `USER@SOCKET` (AttachVGPU's last line, Diagnose's check id)."""
        user, sep, socket = text.rpartition("@")
        return cls(user, Path(socket)) if sep and user and socket.startswith("/") else None

    @property
    def mine(self) -> bool:
        return str(self.socket) == names.sound_socket(os.getuid())


def split_answer(text: str) -> tuple[str, list[Grant]]:
    """AttachVGPU's answer: the diff, and the grants its last lines name."""
    lines = text.splitlines(True)
    grants = [g for line in lines if line.startswith(names.SOUND_LINE)
              if (g := Grant.parse(line[len(names.SOUND_LINE):].strip())) is not None]
    return "".join(x for x in lines if not x.startswith(names.SOUND_LINE)), grants


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    except FileNotFoundError:
        package = {"pactl": "pulseaudio-utils", "setfacl": "acl",
                   "getfacl": "acl"}.get(cmd[0], cmd[0])
        raise SoundError(f"{cmd[0]} is not installed: install {package}, or attach with "
                         "--no-audio.") from None
    except subprocess.TimeoutExpired:
        raise SoundError(f"{' '.join(cmd[:2])} did not answer within {TIMEOUT:.0f} s: is "
                         "the sound server hung?") from None


def group_of(user: str) -> str:
    """The group PulseAudio lets in: the one named like QEMU's user that it belongs to
    (libvirt-qemu on Debian, qemu on Fedora), else its primary group."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SoundError(f"QEMU's user {user} does not exist on this host: is libvirt's "
                         "QEMU driver installed (libvirt-daemon-system)?") from None
    try:
        own = grp.getgrnam(user)
        if own.gr_gid == entry.pw_gid or user in own.gr_mem:
            return own.gr_name
    except KeyError:
        pass
    return grp.getgrgid(entry.pw_gid).gr_name


def _server(address: str | None = None) -> str:
    """The server's name, from the session's own connection (XDG_RUNTIME_DIR/PULSE_SERVER)
    or from address."""
    p = _run(["pactl", *(["-s", address] if address else []), "info"])
    if p.returncode != 0:
        if address:
            return ""
        raise SoundError("No sound server answers in this session (pactl info: "
                         f"{(p.stderr or p.stdout).strip()[:200]}): run this from your "
                         "desktop session with PulseAudio or PipeWire's pipewire-pulse "
                         "running, or attach with --no-audio.")
    found = re.search(r"^Server Name: (.*)$", p.stdout, re.MULTILINE)
    return found.group(1) if found else ""


def is_pipewire(server: str) -> bool:
    """pactl's Server Name: `PulseAudio (on PipeWire 0.3.65)` or `pulseaudio`."""
    return "on PipeWire" in server


def _listening(socket: Path) -> bool:
    """Whether a server listens on socket (a dead one's file refuses the connection)."""
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        try:
            s.connect(str(socket))
        except OSError:
            return False
    return True


def _loaded(socket: Path) -> dict[str, str]:
    """The modules serving socket: index -> arguments."""
    p = _run(["pactl", "list", "short", "modules"])
    return {fields[0]: fields[2] for line in p.stdout.splitlines()
            if len(fields := line.split("\t")) > 2 and fields[1] == MODULE
            and f"socket={socket}" in fields[2].split()}


def _own_directory(path: Path, create: bool) -> None:
    """path is a directory of this user's (never a link someone placed), made if asked."""
    if create:
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise SoundError(f"Cannot make {path}: {e.strerror}.") from None
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise SoundError(f"{path} does not exist: this is not a login session of uid "
                         f"{os.getuid()} (no runtime directory). Run this from your desktop "
                         "session, or attach with --no-audio.") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise SoundError(f"{path} is not a directory of yours; remove it and try again.")


def ensure(grant: Grant) -> None:
    """Make the grant in this session, as this user: socket, module, ACLs."""
    if not grant.mine:
        raise SoundError(f"{grant.socket} is not this session's sound socket (you are uid "
                         f"{os.getuid()}): run this as the user who attached the VM.")
    group = group_of(grant.user)
    folder = grant.socket.parent
    _own_directory(folder.parent, create=False)
    server = _server()  # before anything is made: no server, nothing to grant
    _own_directory(folder, create=True)
    for path in (folder.parent, folder):
        _let_in(grant.user, path, "x")
    if is_pipewire(server):
        _serve_pipewire(grant)
    else:
        _serve_pulseaudio(grant, group, server)


def _serve_pulseaudio(grant: Grant, group: str, server: str) -> None:
    """A second native socket of the user's PulseAudio, for QEMU's group and the user."""
    wanted = f"auth-group={group}"
    loaded = _loaded(grant.socket)
    if any(wanted in args.split() for args in loaded.values()):
        return
    for index in loaded:  # another group's (QEMU's user changed): this one replaces it
        _run(["pactl", "unload-module", index])
    if grant.socket.is_socket():  # left by a sound server that is gone
        grant.socket.unlink()
    p = _run(["pactl", "load-module", MODULE, f"socket={grant.socket}", wanted,
              "auth-cookie-enabled=0"])
    if p.returncode != 0:
        raise SoundError(f"{server or 'The sound server'} refused to open {grant.socket} "
                         f"({(p.stderr or p.stdout).strip()[:200]}). Attach with "
                         "--no-audio to leave the sound out.")


def _serve_pipewire(grant: Grant) -> None:
    """A pulse server of the user's PipeWire on the socket, reachable by QEMU's user alone
    (the file system is its only gate); one that answers already is kept."""
    if _listening(grant.socket) and is_pipewire(_server(f"unix:{grant.socket}")):
        _let_in(grant.user, grant.socket, "rw")
        return
    if shutil.which("pipewire") is None:
        raise SoundError("pipewire is not installed: install pipewire-bin (PipeWire's "
                         "server, which serves the VM's socket), or attach with --no-audio.")
    if grant.socket.is_socket():  # left by a server that is gone
        grant.socket.unlink()
    conf = importlib.resources.files("gvtd") / "data" / "pipewire-sound.conf"
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as s:
        try:
            s.bind(str(grant.socket))
        except OSError as e:
            raise SoundError(f"Cannot open {grant.socket}: {e.strerror}; remove it and "
                             "try again.") from None
        os.chmod(grant.socket, 0o600)  # in a 0700 directory: none came in before this
        _let_in(grant.user, grant.socket, "rw")
        s.listen(64)
        with importlib.resources.as_file(conf) as path:
            subprocess.Popen(["sh", "-c", ACTIVATE, "sh", "pipewire", "-c", str(path)],
                             stdin=s, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True,  # outlives this command and its terminal
                             env=dict(os.environ, PULSE_RUNTIME_PATH=str(grant.socket.parent)))
    server = _server(f"unix:{grant.socket}")  # returns once the server answers, or it died
    if not is_pipewire(server):
        raise SoundError(f"PipeWire did not serve {grant.socket} (run `pipewire -c {conf}` "
                         f"with PULSE_RUNTIME_PATH={grant.socket.parent} to see why), or "
                         "attach with --no-audio.")


def _let_in(user: str, path: Path, perms: str) -> None:
    """One ACL entry: user, and no one else, gets perms on path."""
    p = _run(["setfacl", "-m", f"u:{user}:{perms}", str(path)])
    if p.returncode != 0:
        raise SoundError(f"Cannot let {user} reach {path} (setfacl: "
                         f"{p.stderr.strip()[:200]}); does its file system take ACLs?")


def _acl_has(path: Path, user: str, perms: str = "x") -> bool:
    p = _run(["getfacl", "-cp", str(path)])
    entries = dict(line.rsplit(":", 1) for line in p.stdout.splitlines() if ":" in line)
    mask = entries.get("mask", "rwx")
    return all(c in entries.get(f"user:{user}", "") and c in mask for c in perms)


def verdict(grant: Grant) -> tuple[str, str, str]:
    """(severity, message, fix) of doctor's sound check, seen from this session."""
    fix = (f"Run `gvt-client start` for the VM from this session (it lets {grant.user} in "
           "again), or `gvt-client attach DOMAIN VGPU` once more.")
    try:
        server = _server()
        pipewire = is_pipewire(server)
        loaded = {} if pipewire else _loaded(grant.socket)
        group = group_of(grant.user)
        folders = [grant.socket.parent.parent, grant.socket.parent]
        closed = [str(f) for f in folders if not f.is_dir() or not _acl_has(f, grant.user)]
        if pipewire and _listening(grant.socket) and not _acl_has(grant.socket, grant.user,
                                                                   "rw"):
            closed.append(str(grant.socket))
        served = is_pipewire(_server(f"unix:{grant.socket}")) if pipewire else bool(loaded)
    except SoundError as e:
        return "fail", f"QEMU's sound cannot reach this session: {e}", fix
    if not served:
        return ("fail", f"{server} serves no {grant.socket}: QEMU (as {grant.user}) cannot "
                "play there and the VM will not start.", fix)
    if not pipewire and not any(f"auth-group={group}" in a.split() for a in loaded.values()):
        return ("warn", f"{grant.socket} is served without auth-group={group}: QEMU's user "
                "may be refused, or others let in.", fix)
    if closed:
        return ("fail", f"{grant.user} may not reach {', '.join(closed)} (no ACL "
                "entry lets it in), so QEMU cannot open the socket.", fix)
    if pipewire:
        return ("pass", f"{server} serves {grant.socket}, which {grant.user} alone may reach "
                "(PipeWire checks no group: the ACLs are the only gate).", "")
    return ("pass", f"{server} serves {grant.socket} to group {group}, and {grant.user} "
            "alone may reach it.", "")


def recheck(check_id: str, severity: str, message: str, fix: str) -> tuple[str, str, str]:
    """The daemon's sound-access:USER@SOCKET finding, checked here when the socket is this
    session's; unchanged otherwise."""
    grant = Grant.parse(check_id[len(names.CHECK_SOUND):])
    if grant is None or not grant.mine:
        return severity, message, fix
    return verdict(grant)


async def before_start(c: Client) -> None:
    """QEMU does not start while the socket its sound goes to is missing (a new login
    forgot it): open it again when a domain plays through this session's."""
    if _listening(Path(names.sound_socket(os.getuid()))):
        return
    (found,) = await c.call("Diagnose")
    grants = [g for i, *_ in found if i.startswith(names.CHECK_SOUND)
              if (g := Grant.parse(i[len(names.CHECK_SOUND):])) and g.mine]
    try:
        for grant in grants:
            await asyncio.to_thread(ensure, grant)
    except SoundError as e:
        print(f"gvt-client: warning: the VM's sound: {e}", file=sys.stderr)

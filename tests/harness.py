"""Real parts for integration tests: a private dbus-daemon, `gvtd --simulate` on it with
python-dbusmock's polkitd beside it, and a small synchronous D-Bus client. Everything waits
on events (a READY=1 datagram, a reply, a signal), never on sleeps.

gvtd lets root do anything without asking polkit, so a test that called it as root would
never pass the authorization gate. The tests therefore call gvtd as a stranger: `Client`
connects as the unprivileged STRANGER uid and `Simulation.gvt_client` runs the CLI under
setpriv, while polkit (granting gvtd's actions unless a test says otherwise) decides. Root
is used only for what is root's: the Simulator (the emulated kernel's controls, not gvtd's),
polkit's mock controls, and the libvirt hook's methods."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.auth import UID_NOT_SPECIFIED, AuthExternal

from gvtd import names
from gvtd.sim import session
from gvtd.sim.session import TIMEOUT, SimulatedHost

ROOT = Path(__file__).resolve().parent.parent
# The unprivileged caller of every ordinary test: nobody, nogroup on Debian.
STRANGER = 65534
STRANGER_GID = 65534
POLKIT = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
MOCK_IFACE = "org.freedesktop.DBus.Mock"
GVTD_ACTIONS = [names.ACTION_MANAGE, names.ACTION_VGPU, names.ACTION_DOMAIN]


class CallError(Exception):
    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


def plain(value: Any) -> Any:
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


class DBusDaemon(session.DBusDaemon):
    """The simulation's private bus, which also admits the stranger."""

    def __init__(self, guests: Sequence[int] = (STRANGER,)) -> None:
        super().__init__(guests)


@contextmanager
def acting_as(uid: int, gid: int) -> Iterator[None]:
    """Run the block with uid and gid as effective ids and no supplementary groups (the
    credentials the kernel records at connect(2)); root's come back after."""
    if os.geteuid() != 0:
        raise RuntimeError("the integration tests run as root: they call gvtd as another "
                           f"uid ({uid}), which only root can become")
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups([])
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


class _SocketAs(socket.socket):
    """A Unix socket that connects with another uid's credentials (SO_PEERCRED and
    SO_PEERGROUPS are taken at connect(2)), and is the test process's own otherwise."""

    uid = gid = 0

    def connect(self, address: Any) -> None:
        with acting_as(self.uid, self.gid):
            super().connect(address)


class _BusAs(MessageBus):
    """dbus-fast's MessageBus whose socket connects as uid; the bus then takes the uid from
    those credentials (AUTH EXTERNAL without an identity), not from the process's real uid."""

    def __init__(self, address: str, uid: int, gid: int) -> None:
        super().__init__(bus_address=address, auth=AuthExternal(UID_NOT_SPECIFIED))
        self._as = (uid, gid)

    def _create_socket_for_transport(self, transport: str, options: dict[str, str]
                                     ) -> tuple[socket.socket, Any, Any]:
        if transport != "unix" or "path" not in options:
            raise ValueError(f"a test bus is a Unix socket path, not {transport} {options}")
        sock = _SocketAs(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.uid, sock.gid = self._as
        return sock, sock.makefile("rwb"), options["path"]


async def connect_as(address: str, uid: int = STRANGER) -> MessageBus:
    """A connection that the bus knows as uid: the process's own, or another's taken at
    connect(2) (the stranger's group is nogroup, another uid's the same number)."""
    if uid == os.geteuid():
        return await MessageBus(bus_address=address).connect()
    return await _BusAs(address, uid, STRANGER_GID if uid == STRANGER else uid).connect()


def unix_user(bus: MessageBus, loop: asyncio.AbstractEventLoop, name: str) -> int:
    """The uid the bus daemon knows a connection by."""
    reply = loop.run_until_complete(bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="GetConnectionUnixUser", signature="s",
        body=[name])))
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
    return int(reply.body[0])


class Client:
    """A synchronous D-Bus client on its own event loop, recording every signal it sees.
    It calls as the stranger unless given another uid; a root client says why it is root."""

    def __init__(self, address: str, uid: int = STRANGER) -> None:
        self.loop = asyncio.new_event_loop()
        self.uid = uid

        self.bus: MessageBus = self.loop.run_until_complete(connect_as(address, uid))
        assert self.bus.unique_name is not None
        seen = unix_user(self.bus, self.loop, self.bus.unique_name)
        if seen != uid:
            self.close()
            raise RuntimeError(f"the bus sees this client as uid {seen}, not {uid}")
        self.signals: list[Message] = []
        self._changed = asyncio.Event()
        self.bus.add_message_handler(self._on_message)
        self.call("AddMatch", "s", [f"type='signal',sender='{names.BUS_NAME}'"],
                  dest="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                  iface="org.freedesktop.DBus")

    def _on_message(self, msg: Message) -> None:
        if msg.message_type == MessageType.SIGNAL:
            self.signals.append(msg)
            self._changed.set()

    def close(self) -> None:
        self.bus.disconnect()
        self.loop.close()

    def call(self, member: str, signature: str = "", body: list[Any] | None = None, *,
             dest: str = names.BUS_NAME, path: str = names.ROOT_PATH,
             iface: str = names.MANAGER_IFACE, timeout: float = TIMEOUT) -> list[Any]:
        async def go() -> Message:
            reply = await self.bus.call(Message(destination=dest, path=path, interface=iface,
                                                member=member, signature=signature,
                                                body=body or []))
            assert reply is not None
            return reply

        reply = self.loop.run_until_complete(asyncio.wait_for(go(), timeout))
        if reply.message_type == MessageType.ERROR:
            raise CallError(reply.error_name or "", reply.body[0] if reply.body else "")
        return reply.body

    def send_call(self, member: str, signature: str = "", body: list[Any] | None = None
                  ) -> Callable[[], Message]:
        """Send a Manager call without waiting; the returned function waits for its reply
        (a METHOD_RETURN or an ERROR message)."""
        answered: asyncio.Future[Message] = self.loop.create_future()
        msg = Message(destination=names.BUS_NAME, path=names.ROOT_PATH,
                      interface=names.MANAGER_IFACE, member=member, signature=signature,
                      body=body or [])

        def on_message(m: Message) -> None:
            if m.reply_serial == msg.serial and not answered.done() and \
                    m.message_type in (MessageType.METHOD_RETURN, MessageType.ERROR):
                answered.set_result(m)

        self.bus.add_message_handler(on_message)
        self.bus.send(msg)
        return lambda: self.loop.run_until_complete(asyncio.wait_for(answered, TIMEOUT))

    def define(self, **options: Any) -> str:
        opts = {k: Variant("a(ss)" if k == "attrs" else "s", v) for k, v in options.items()}
        return self.call("Define", "a{sv}", [opts])[0]

    def objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        return plain(self.call("GetManagedObjects", iface=names.OBJECT_MANAGER_IFACE)[0])

    def props(self, path: str, iface: str, dest: str = names.BUS_NAME) -> dict[str, Any]:
        return plain(self.call("GetAll", "s", [iface], dest=dest, path=path,
                               iface=names.PROPERTIES_IFACE)[0])

    def vgpus(self) -> dict[str, dict[str, Any]]:
        """VGPU properties by name (or UUID for unnamed mdevs)."""
        out = {}
        for ifaces in self.objects().values():
            v = ifaces.get(names.VGPU_IFACE)
            if v:
                out[v["Name"] or v["UUID"]] = v
        return out

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float = TIMEOUT,
                 after: Message | None = None) -> Message:
        """Wait for a signal (already received or coming) that satisfies predicate; with
        `after`, only one that came after that signal."""
        deadline = time.monotonic() + timeout
        seen = next(i + 1 for i, m in enumerate(self.signals) if m is after) if after else 0
        while True:
            for msg in self.signals[seen:]:
                if predicate(msg):
                    return msg
            seen = len(self.signals)
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no matching signal")
            try:
                self.loop.run_until_complete(asyncio.wait_for(self._changed.wait(), remaining))
            except asyncio.TimeoutError:
                raise TimeoutError("no matching signal") from None


class Polkit:
    """python-dbusmock's polkitd template on a bus, granting gvtd's actions until a test
    says otherwise with allow(). `control` is a root client: the mock's controls are the
    test's, not a caller's."""

    def __init__(self, address: str, control: Client) -> None:
        self.control = control
        control.call("AddMatch", "s", ["type='signal',sender='org.freedesktop.DBus',"
                                       f"member='NameOwnerChanged',arg0='{POLKIT}'"],
                     dest="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                     iface="org.freedesktop.DBus")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--session", "--template", "polkitd"],
            env=dict(os.environ, DBUS_SESSION_BUS_ADDRESS=address),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._ready = False

    def owner(self) -> str:
        """polkit's unique name on the bus ("" when it has none)."""
        try:
            return self.control.call("GetNameOwner", "s", [POLKIT], dest="org.freedesktop.DBus",
                                     path="/org/freedesktop/DBus", iface="org.freedesktop.DBus")[0]
        except CallError:
            return ""

    def wait_ready(self) -> None:
        """Wait until polkit owns its name (started in the background, so that it comes up
        while gvtd does), then grant gvtd's actions."""
        if self._ready:
            return
        if not self.owner():
            try:
                self.control.wait_for(lambda m: m.member == "NameOwnerChanged"
                                      and m.body[0] == POLKIT and bool(m.body[2]))
            except TimeoutError:
                raise RuntimeError("python-dbusmock's polkitd did not take its name (exit "
                                   f"status {self.proc.poll()})") from None
        self._ready = True
        self.allow(GVTD_ACTIONS)

    def allow(self, actions: list[str]) -> None:
        """Grant exactly these actions to every caller (an empty list refuses everything)."""
        self.control.call("SetAllowed", "as", [actions], dest=POLKIT, path=POLKIT_PATH,
                          iface=MOCK_IFACE)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(TIMEOUT)


class Simulation:
    """`gvtd --simulate` on a private bus: the emulated kernel plus the real daemon, called
    by the stranger (`client`, `gvt_client`) with polkit answering (`polkit`, None with
    polkit=False for a test that brings its own)."""

    def __init__(self, bus: session.DBusDaemon, profile: str = "default",
                 config_dir: Path | None = None, extra: list[str] | None = None,
                 polkit: bool = True, stderr: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.bus = bus
        args = list(extra or [])
        if config_dir is not None:
            args += ["--config-dir", str(config_dir), "--state-dir", str(config_dir / "state")]
        # Root, for the Simulator (the emulated kernel's controls), polkit's mock controls
        # and the libvirt hook's methods: what is root's by design, never an ordinary call.
        self.root_client = Client(bus.address, uid=0)
        self.polkit = Polkit(bus.address, self.root_client) if polkit else None
        # A home the stranger may use: pytest's tmp_path is root's alone.
        self.home = Path(tempfile.mkdtemp(prefix="gvtd-stranger-"))
        os.chown(self.home, STRANGER, STRANGER_GID)
        try:
            self.host = SimulatedHost(bus.address, profile, args, stderr=stderr, env=env)
            self.env = self.host.env
            self.proc = self.host.proc
            if self.polkit is not None:
                self.polkit.wait_ready()
            self.client = Client(bus.address)
        except BaseException:
            self.stop()
            raise
        sim = self.sim_props()
        self.root = Path(sim["Root"])
        self.config_dir = Path(sim["ConfigDir"])
        self.state_dir = Path(sim["StateDir"])
        self.stranger_env = dict(self.env, HOME=str(self.home), USER="nobody",
                                 LOGNAME="nobody")
        self.stranger_env.pop("XAUTHORITY", None)

    def sim_call(self, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
        """Call the Simulator, as root: it plays the kernel, which no caller of gvtd is."""
        return self.root_client.call(member, signature, body, dest=names.SIMULATOR_BUS_NAME,
                                     path=names.SIMULATOR_PATH, iface=names.SIMULATOR_IFACE)

    def sim_props(self) -> dict[str, Any]:
        return self.root_client.props(names.SIMULATOR_PATH, names.SIMULATOR_IFACE,
                                      dest=names.SIMULATOR_BUS_NAME)

    def write_log(self) -> list[tuple[str, str, str]]:
        return [tuple(e) for e in self.sim_call("WriteLog")[0]]

    def reachable_by_stranger(self, path: Path) -> Path:
        """Let the stranger reach path, as a user reaches a host's /etc/mdevctl.d: search
        permission on the temporary directories above it, which are root's alone (mkdtemp
        makes them 0700); path's own mode stays as its owner made it."""
        tmp = Path(tempfile.gettempdir())
        for d in path.parents:
            if d == tmp or tmp not in d.parents:
                break
            d.chmod(d.stat().st_mode | 0o001)
        return path

    @staticmethod
    def as_stranger(cmd: list[str]) -> list[str]:
        """cmd run as the stranger (uid, gid and no supplementary groups), as a user would."""
        return ["setpriv", f"--reuid={STRANGER}", f"--regid={STRANGER_GID}", "--clear-groups",
                *cmd]

    def gvt_client(self, *args: str, check: bool = False, as_root: str = ""
                   ) -> subprocess.CompletedProcess[str]:
        """Run gvt-client as the stranger, in its home; `as_root` (the reason) runs it as
        root instead, for a command whose files only root may use."""
        cmd = [sys.executable, "-m", "gvtd.client.main", "--session", *args]
        if as_root:
            proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                                  timeout=TIMEOUT)
        else:
            proc = subprocess.run(self.as_stranger(cmd), env=self.stranger_env, cwd=self.home,
                                  capture_output=True, text=True, timeout=TIMEOUT)
        if check and proc.returncode != 0:
            raise AssertionError(f"gvt-client {args} failed: {proc.stderr}")
        return proc

    def stop(self) -> None:
        for name in ("client", "root_client"):
            c = getattr(self, name, None)
            if c is not None:
                c.close()
                setattr(self, name, None)
        if self.polkit is not None:
            self.polkit.stop()
        if getattr(self, "host", None) is not None:
            self.host.stop()
            self.host = None  # type: ignore[assignment]
        shutil.rmtree(self.home, ignore_errors=True)


class Monitor:
    """A bus monitor (BecomeMonitor, as root) that records the method calls matching its
    rules, to see what one process asked another."""

    def __init__(self, address: str, rules: list[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.calls: list[Message] = []
        self._seen = asyncio.Event()

        async def start() -> MessageBus:
            bus = await MessageBus(bus_address=address).connect()
            bus.add_message_handler(self._on_message)
            reply = await bus.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus.Monitoring", member="BecomeMonitor",
                signature="asu", body=[rules, 0]))
            assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
            return bus

        self.bus = self.loop.run_until_complete(start())

    def _on_message(self, msg: Message) -> bool | None:
        if msg.message_type is MessageType.METHOD_CALL:
            self.calls.append(msg)
            self._seen.set()
            return True  # a monitor never answers
        return None

    def wait_calls(self, count: int, timeout: float = TIMEOUT) -> list[Message]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count:
            self._seen.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"saw {len(self.calls)} of {count} calls")
            try:
                self.loop.run_until_complete(asyncio.wait_for(self._seen.wait(), remaining))
            except asyncio.TimeoutError:
                continue
        return self.calls

    def close(self) -> None:
        self.bus.disconnect()
        self.loop.close()


# A simulation that systemd would watch with WatchdogSec=1: gvtd pings every 0.5 s, and a
# gap of more than 1 s between two pings would get it killed.
WATCHDOG_SEC = 1.0
WATCHDOG = {"WATCHDOG_USEC": str(int(WATCHDOG_SEC * 1_000_000))}


def keeps_answering(sim: Simulation, seconds: float) -> int:
    """For `seconds` (a Simulation started with env=WATCHDOG, whose supervisor passes the
    pings on): WATCHDOG=1 arrives at least once per WatchdogSec, and after each, Ping and
    GetManagedObjects are answered within it. Returns how many pings came. Raises
    TimeoutError when gvtd stops answering or pinging."""
    notify = sim.host.notify
    while select.select([notify.sock], [], [], 0)[0]:  # pings queued before: not evidence
        notify.sock.recv(4096)
    notify.messages.clear()
    deadline = time.monotonic() + seconds
    pings = 0
    while time.monotonic() < deadline:
        notify.wait("WATCHDOG=1", timeout=WATCHDOG_SEC)
        pings += 1
        sim.client.call("Ping", path="/", iface="org.freedesktop.DBus.Peer",
                        timeout=WATCHDOG_SEC)
        sim.client.call("GetManagedObjects", iface="org.freedesktop.DBus.ObjectManager",
                        timeout=WATCHDOG_SEC)
    return pings


def tree_snapshot(path: Path) -> dict[str, bytes]:
    """Every regular file below path with its content, to prove nothing was written."""
    out = {}
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(path))] = p.read_bytes()
    return out


def pipelined(address: str, batches: list[list[Message]], timeout: float = 120,
              uid: int = STRANGER) -> list[list[Message]]:
    """Send each batch on its own connection (as uid: the stranger unless told), all at
    once without waiting for any reply, and return the replies in the order of the calls.
    The connections wait when their socket is full (gvtd.bus.flow), so a burst measures
    the daemon, not the client."""
    from gvtd.bus.flow import patient

    async def one(batch: list[Message]) -> list[Message]:
        bus = patient(await connect_as(address, uid))
        replies: dict[int, Message] = {}
        done = asyncio.Event()

        def on_message(msg: Message) -> None:
            if msg.message_type in (MessageType.METHOD_RETURN, MessageType.ERROR) \
                    and msg.reply_serial in replies:
                replies[msg.reply_serial] = msg
                if all(replies.values()):
                    done.set()

        bus.add_message_handler(on_message)
        for msg in batch:
            bus.send(msg)
            replies[msg.serial] = None  # type: ignore[assignment]
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except asyncio.TimeoutError:
            missing = sum(r is None for r in replies.values())
            raise TimeoutError(f"{missing} of {len(batch)} calls unanswered after "
                               f"{timeout:.0f} s") from None
        finally:
            bus.disconnect()
        return [replies[m.serial] for m in batch]

    async def every() -> list[list[Message]]:
        return list(await asyncio.gather(*[one(b) for b in batches]))

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(every())
    finally:
        loop.close()

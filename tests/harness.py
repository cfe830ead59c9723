"""Real parts for integration tests: a private dbus-daemon, `gvtd --simulate` on it, and a
small synchronous D-Bus client. Everything waits on events (a READY=1 datagram, a reply, a
signal), never on sleeps."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from gvtd import names
from gvtd.sim.session import TIMEOUT, DBusDaemon, SimulatedHost  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


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


class Client:
    """A synchronous D-Bus client on its own event loop, recording every signal it sees."""

    def __init__(self, address: str) -> None:
        self.loop = asyncio.new_event_loop()

        async def connect() -> MessageBus:
            return await MessageBus(bus_address=address).connect()

        self.bus: MessageBus = self.loop.run_until_complete(connect())
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


class Simulation:
    """`gvtd --simulate` on a private bus: the emulated kernel plus the real daemon."""

    def __init__(self, bus: DBusDaemon, profile: str = "default",
                 config_dir: Path | None = None, extra: list[str] | None = None,
                 stderr: int | None = None) -> None:
        self.bus = bus
        args = list(extra or [])
        if config_dir is not None:
            args += ["--config-dir", str(config_dir), "--state-dir", str(config_dir / "state")]
        self.host = SimulatedHost(bus.address, profile, args, stderr=stderr)
        self.env = self.host.env
        self.proc = self.host.proc
        self.client = Client(bus.address)
        sim = self.sim_props()
        self.root = Path(sim["Root"])
        self.config_dir = Path(sim["ConfigDir"])
        self.state_dir = Path(sim["StateDir"])

    def sim_call(self, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
        return self.client.call(member, signature, body, dest=names.SIMULATOR_BUS_NAME,
                                path=names.SIMULATOR_PATH, iface=names.SIMULATOR_IFACE)

    def sim_props(self) -> dict[str, Any]:
        c = Client(self.bus.address)
        try:
            return c.props(names.SIMULATOR_PATH, names.SIMULATOR_IFACE,
                           dest=names.SIMULATOR_BUS_NAME)
        finally:
            c.close()

    def write_log(self) -> list[tuple[str, str, str]]:
        return [tuple(e) for e in self.sim_call("WriteLog")[0]]

    def gvt_client(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "gvtd.client.main", "--session", *args],
                              env=self.env, capture_output=True, text=True, timeout=TIMEOUT)
        if check and proc.returncode != 0:
            raise AssertionError(f"gvt-client {args} failed: {proc.stderr}")
        return proc

    def stop(self) -> None:
        if getattr(self, "client", None) is not None:
            self.client.close()
            self.client = None  # type: ignore[assignment]
        self.host.stop()


def tree_snapshot(path: Path) -> dict[str, bytes]:
    """Every regular file below path with its content, to prove nothing was written."""
    out = {}
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(path))] = p.read_bytes()
    return out


def pipelined(address: str, batches: list[list[Message]], timeout: float = 120) -> list[list[Message]]:
    """Send each batch on its own connection, all at once without waiting for any reply,
    and return the replies in the order of the calls. The connections wait when their
    socket is full (gvtd.bus.flow), so a burst measures the daemon, not the client."""
    from gvtd.bus.flow import patient

    async def one(batch: list[Message]) -> list[Message]:
        bus = patient(await MessageBus(bus_address=address).connect())
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

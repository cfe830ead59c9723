"""The emulated machine's systemd-logind: python-dbusmock's logind template on a bus of its
own, which the simulated gvtd takes for its system bus (DBUS_SYSTEM_BUS_ADDRESS), as a real
gvtd finds logind on the system bus whichever bus it serves. The supervisor makes it
announce sleep and resume (Simulator.PrepareForSleep), and it has one desktop session, a
Wayland one of the user running the simulation, for the starts of GL displays."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import sys
from pathlib import Path

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

log = logging.getLogger("gvtd.sim")

LOGIND = "org.freedesktop.login1"
LOGIND_PATH = "/org/freedesktop/login1"
LOGIND_MANAGER = "org.freedesktop.login1.Manager"
MOCK = "org.freedesktop.DBus.Mock"
DBUS = "org.freedesktop.DBus"
TIMEOUT = 30.0


class Logind:
    """A private dbus-daemon with the logind mock on it; `address` is that bus."""

    def __init__(self) -> None:
        self.address = ""
        self._daemon: asyncio.subprocess.Process | None = None
        self._mock: asyncio.subprocess.Process | None = None
        self._bus: MessageBus | None = None

    async def start(self) -> None:
        """Start the bus and the mock; return once the mock owns org.freedesktop.login1.
        RuntimeError when either cannot start."""
        # Not the supervisor's umockdev preload, nor its service manager: dbus-daemon would
        # send it READY=1 for the simulation.
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "NOTIFY_SOCKET")}
        self._daemon = await asyncio.create_subprocess_exec(
            "dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address=1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env)
        assert self._daemon.stdout is not None
        self.address = (await asyncio.wait_for(self._daemon.stdout.readline(),
                                               TIMEOUT)).decode().strip()
        if not self.address:
            raise RuntimeError("the dbus-daemon for the simulation's logind did not start")
        self._bus = await MessageBus(bus_address=self.address).connect()
        owned = asyncio.get_running_loop().create_future()

        def on_message(msg: Message) -> None:
            if msg.member == "NameOwnerChanged" and msg.body[0] == LOGIND and msg.body[2] \
                    and not owned.done():
                owned.set_result(None)

        self._bus.add_message_handler(on_message)
        await self._call(DBUS, "/org/freedesktop/DBus", DBUS, "AddMatch", "s",
                         [f"type='signal',sender='{DBUS}',member='NameOwnerChanged',"
                          f"arg0='{LOGIND}'"])
        self._mock = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dbusmock", "--system", "--template", "logind",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            env=dict(env, DBUS_SYSTEM_BUS_ADDRESS=self.address))
        exited = asyncio.ensure_future(self._mock.wait())
        done, _ = await asyncio.wait({owned, exited}, timeout=TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if owned not in done:
            raise RuntimeError("python-dbusmock's logind template did not start (is "
                               "python-dbusmock installed? it comes with gvtd[sim])")
        self._bus.remove_message_handler(on_message)

    async def add_desktop(self, runtime_dir: Path) -> None:
        """A local Wayland session on seat0 of whoever runs the simulation: the person
        trying it sits at a desktop, and a GL display's start looks for their session."""
        uid = os.getuid()
        runtime_dir.mkdir(mode=0o700, exist_ok=True)
        path = (await self._call(LOGIND, LOGIND_PATH, MOCK, "AddSession", "ssusb", [
            "sim", "seat0", uid, pwd.getpwuid(uid).pw_name, True])).body[0]
        await self._call(LOGIND, path, MOCK, "UpdateProperties", "sa{sv}", [
            f"{LOGIND}.Session", {"Type": Variant("s", "wayland"), "Display": Variant("s", "")}])
        await self._call(LOGIND, f"{LOGIND_PATH}/user/{uid}", MOCK, "UpdateProperties",
                         "sa{sv}", [f"{LOGIND}.User",
                                    {"RuntimePath": Variant("s", str(runtime_dir))}])

    async def prepare_for_sleep(self, sleeping: bool) -> None:
        """logind's PrepareForSleep(sleeping), sent by the mock that owns logind's name,
        as gvtd expects of a real one."""
        await self._call(LOGIND, LOGIND_PATH, MOCK, "EmitSignal", "sssav",
                         [LOGIND_MANAGER, "PrepareForSleep", "b", [Variant("b", sleeping)]])

    async def _call(self, dest: str, path: str, iface: str, member: str, signature: str,
                    body: list[object]) -> Message:
        assert self._bus is not None
        reply = await asyncio.wait_for(self._bus.call(Message(
            destination=dest, path=path, interface=iface, member=member,
            signature=signature, body=body)), TIMEOUT)
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{member}: {reply.error_name}: {reply.body}")
        return reply

    async def stop(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
        for proc in (self._mock, self._daemon):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await proc.wait()

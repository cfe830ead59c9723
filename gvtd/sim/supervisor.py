"""`gvtd --simulate`: the production daemon over an emulated host.

This process owns the emulated kernel (a umockdev testbed with a FUSE sysfs, see host.py)
and exports io.github.gvtd1.Simulator; the daemon runs as a child process that sees the
testbed as /sys through umockdev's preload, exactly as it would see the real one. Killing or
restarting the daemon therefore never resets the kernel's state, and Reboot() is what a real
reboot is: the kernel forgets every mdev and every VF, and gvtd starts again.
"""
# No `from __future__ import annotations`: dbus-fast reads the D-Bus signatures from them.

import argparse
import asyncio
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dbus_fast import BusType, DBusError, Message, MessageType, PropertyAccess
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag, RequestNameReply
from dbus_fast.service import ServiceInterface, dbus_property, method
from systemd import daemon as sd_daemon

from gvtd import names
from gvtd.sim import machine
from gvtd.sim.kmsg import LOG_INFO, KmsgOps, serve as serve_kmsg
from gvtd.sim.sysfs import unmount
from gvtd.sim.logind import Logind

log = logging.getLogger("gvtd.sim")

PRELOAD = "libumockdev-preload"
PROPERTIES = "org.freedesktop.DBus.Properties"

LIBVIRT_TEST_NODE = """\
<node>
  <pool type='dir'>
    <name>default</name>
    <uuid>35bb2ad9-388a-cdfe-461a-b8907f6e53fe</uuid>
    <capacity unit='GiB'>200</capacity>
    <allocation unit='GiB'>80</allocation>
    <available unit='GiB'>120</available>
    <source/>
    <target><path>/var/lib/libvirt/images</path></target>
  </pool>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>win10</name>
    <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
    <memory unit='GiB'>4</memory>
    <vcpu>4</vcpu>
    <os><type arch='x86_64' machine='q35'>hvm</type></os>
    <devices>
      <graphics type='spice'><listen type='none'/></graphics>
      <video><model type='qxl'/></video>
    </devices>
    <test:runstate>5</test:runstate>
  </domain>
</node>
"""


def _sim_error(e: Exception) -> DBusError:
    name = "InvalidArgument" if isinstance(e, (KeyError, ValueError)) else "Failed"
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return DBusError(names.ERROR_PREFIX + name, str(text))


class SimulatorInterface(ServiceInterface):
    """The kernel's (and the machine's) part, played on request."""

    def __init__(self, sup: "Supervisor") -> None:
        super().__init__(names.SIMULATOR_IFACE)
        self.sup = sup

    def _do(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:
            raise _sim_error(e) from e

    def _fault(self, usage: str, arm: Any, suffix: str, *args: Any) -> None:
        """Arm one of the emulated kernel's faults for the paths ending in suffix; an
        empty suffix (every path) or a bad errno name is InvalidArgument."""
        if not suffix:
            raise DBusError(names.ERROR_PREFIX + "InvalidArgument", usage)
        self._do(arm, suffix, *args)

    @method()
    def UnregisterParent(self, parent: "s") -> None:  # noqa: F821
        self._do(self.sup.host.unregister_parent, parent)

    @method()
    def RegisterParent(self, parent: "s") -> None:  # noqa: F821
        self._do(self.sup.host.register_parent, parent)

    @method()
    def RemoveMdev(self, uuid: "s") -> None:  # noqa: F821
        self._do(self.sup.host.remove_mdev, uuid)

    @method()
    def AddForeignMdev(self, parent: "s", type_id: "s") -> "s":  # noqa: F821
        return self._do(self.sup.host.add_foreign_mdev, parent, type_id)

    @method()
    def AddUntypedMdev(self, parent: "s", type_id: "s") -> "s":  # noqa: F821
        """AddForeignMdev, but its mdev_type link is held back until TypeMdev: what a
        reader can meet on Linux between an mdev's uevents and the link that follows them."""
        return self._do(self.sup.host.add_untyped_mdev, parent, type_id)

    @method()
    def TypeMdev(self, uuid: "s") -> None:  # noqa: F821
        self._do(self.sup.host.type_mdev, uuid)

    @method()
    def UnbindDriver(self, device: "s") -> None:  # noqa: F821
        """The PCI function's driver lets go of it (a PF's driver unloading removes its VFs
        first, with their uevents, then `unbind` on the PF); nothing when it has none."""
        self._pci(self.sup.host.unbind_driver, device)

    @method()
    def BindDriver(self, device: "s", driver: "s") -> None:  # noqa: F821
        """driver takes the PCI function whatever its driver_override and autoprobe say: a
        PF's driver loading (it sets its VF limit again), or a host driver grabbing a VF;
        Failed when another driver has it."""
        self._pci(self.sup.host.bind_driver, device, driver)

    def _pci(self, fn: Any, device: str, *args: Any) -> None:
        """A PCI core operation, its errno said in words."""
        try:
            fn(device, *args)
        except OSError as e:
            names_of = ", ".join(d for d, _, _ in self.sup.host.pci_devices()) or "none"
            text = {errno.ENODEV: f"The emulated kernel has no PCI function {device} (it has "
                                  f"{names_of}).",
                    errno.EBUSY: f"{device} is bound to another driver: UnbindDriver it first.",
                    errno.EINVAL: f"{args[0] if args else ''} cannot take {device}: its probe "
                                  "failed (vfio-pci needs an IOMMU group, a driver a name)."
                    }.get(e.errno or 0, str(e))
            name = "InvalidArgument" if e.errno == errno.ENODEV else "Failed"
            raise DBusError(names.ERROR_PREFIX + name, text) from e

    @method()
    async def PrepareForSleep(self, sleeping: "b") -> None:  # noqa: F821
        """The simulation's logind announces sleep (true) or resume (false); returns once
        gvtd has acted on it (Manager.Suspend `sleeping`, or back from `resuming`)."""
        try:
            await self.sup.prepare_for_sleep(sleeping)
        except (RuntimeError, TimeoutError) as e:
            raise _sim_error(e) from e

    @method()
    def KernelMessage(self, uuid: "s", text: "s", level: "u", facility: "u") -> "t":  # noqa: F821
        """The kernel prints text (printk at level, 3 for pr_err); with a vGPU's UUID, as
        GVT-g's gvt_vgpu_err does: "gvt: vgpu ID: text" with its intel_vgpu/vgpu_id.
        facility 1 is what a process writing into /dev/kmsg gets. Returns its sequence
        number in the emulated /dev/kmsg."""
        if uuid:
            text = f"gvt: vgpu {self._do(self.sup.host.kernel.vgpu_id, uuid)}: {text}"
        if level > 7 or facility > 23 or len(text) > 1024:
            raise _sim_error(ValueError("level is 0-7, facility 0-23, text at most 1024 "
                                        "characters"))
        return self.sup.kmsg.emit(text, level, facility)

    @method()
    def KernelFlood(self, text: "s", count: "u") -> "t":  # noqa: F821
        """The kernel prints count info-level records "text N" at once (a driver spamming
        the log), as fast as the emulated /dev/kmsg takes them; the last one's number."""
        if count > 1_000_000 or len(text) > 1000:
            raise _sim_error(ValueError("at most 1000000 records of 1000 characters"))
        seq = 0
        for i in range(count):
            seq = self.sup.kmsg.emit(f"{text} {i}", level=6)
        return seq

    @method()
    async def Reboot(self) -> None:
        await self.sup.reboot()

    @method()
    async def RestartDaemon(self) -> None:
        """`systemctl restart gvtd`: the kernel keeps its mdevs."""
        await self.sup.restart()

    @method()
    def KillOnWrite(self, suffix: "s", phase: "s") -> None:  # noqa: F821
        """SIGKILL gvtd at its next write to a path ending in suffix, "before" the kernel
        acts on it (the write never happens) or "after" (it happened, gvtd never hears).
        gvtd is then restarted, as systemd would."""
        if phase not in ("before", "after") or not suffix:
            raise DBusError(names.ERROR_PREFIX + "InvalidArgument",
                            "KillOnWrite(suffix, phase): phase is before or after")
        self.sup.kill_on_write(suffix, phase)

    @method()
    def VanishAfterCreate(self, type_id: "s", times: "u") -> None:  # noqa: F821
        """The next `times` mdevs created of type_id are removed again right after their
        create returns: a driver that gives up on a vGPU at once."""
        self.sup.vanish_after_create(type_id, times)

    @method()
    def UeventLog(self) -> "a(dss)":  # noqa: F821
        """(CLOCK_MONOTONIC seconds at send, action, devpath) of the last 1000 uevents."""
        return [list(e) for e in self.sup.host.uevents()]

    @method()
    def WriteLog(self) -> "a(sss)":  # noqa: F821
        return [[e.path, e.data, e.result] for e in self.sup.host.write_log()]

    @method()
    def StallWrites(self, suffix: "s") -> None:  # noqa: F821
        """gvtd's writes to paths ending in suffix hang before the kernel acts on them (a
        stuck driver) until ReleaseWrites(); gvtd stopping releases them too."""
        self._fault("StallWrites(suffix)", self.sup.host.stall_writes, suffix)

    @method()
    def HoldRemove(self, uuid: "s") -> None:  # noqa: F821
        """A remove of the mdev hangs, as while QEMU holds its vfio device open, until
        ReleaseWrites() (QEMU letting go); WaitStalled() says when one reached it."""
        self._do(self.sup.host.hold_remove, uuid)

    @method()
    def RefuseRemove(self, uuid: "s", times: "u") -> None:  # noqa: F821
        """The next `times` removes of the mdev fail with EBUSY, as kvmgt answers while
        the vGPU is open; the mdev stays."""
        self._do(self.sup.host.refuse_removes, uuid, times)

    @method()
    def StallReads(self, suffix: "s") -> None:  # noqa: F821
        """gvtd's reads and lookups of paths ending in suffix hang until ReleaseWrites():
        a test can change something while gvtd is in the middle of an operation that
        reads them."""
        self._fault("StallReads(suffix)", self.sup.host.stall_reads, suffix)

    @method()
    def FailReads(self, suffix: "s", errno_name: "s") -> None:  # noqa: F821
        """gvtd's reads and lookups of paths ending in suffix fail with errno_name (EACCES,
        EIO) until ReleaseWrites(): a fault that is not the file's absence."""
        self._fault("FailReads(suffix, errno)", self.sup.host.fail_reads, suffix, errno_name)

    @method()
    def FailWrites(self, suffix: "s", errno_name: "s") -> None:  # noqa: F821
        """gvtd's writes to paths ending in suffix fail with errno_name (EBUSY, EIO) before
        the kernel acts on them, until ReleaseWrites()."""
        self._fault("FailWrites(suffix, errno)", self.sup.host.fail_writes, suffix,
                    errno_name)

    @method()
    async def WaitStalled(self) -> "s":  # noqa: F821
        """The path of the first write or read hanging since StallWrites() or StallReads(),
        once one does (within 30 s, else Failed): a test knows gvtd is in the middle of it."""
        try:
            return await asyncio.to_thread(self.sup.host.wait_stalled, 30.0)
        except TimeoutError as e:
            raise _sim_error(e) from e

    @method()
    def ReleaseWrites(self) -> None:
        self.sup.host.release_writes()

    @dbus_property(access=PropertyAccess.READ)
    def Root(self) -> "s":  # noqa: F821
        return str(self.sup.host.root)

    @dbus_property(access=PropertyAccess.READ)
    def ConfigDir(self) -> "s":  # noqa: F821
        return str(self.sup.config_dir)

    @dbus_property(access=PropertyAccess.READ)
    def StateDir(self) -> "s":  # noqa: F821
        return str(self.sup.state_dir)

    @dbus_property(access=PropertyAccess.READ)
    def RuntimeDir(self) -> "s":  # noqa: F821
        return str(self.sup.runtime_dir)

    @dbus_property(access=PropertyAccess.READ)
    def DaemonPid(self) -> "u":  # noqa: F821
        return self.sup.child.pid if self.sup.child else 0

    @dbus_property(access=PropertyAccess.READ)
    def StartupMs(self) -> "d":  # noqa: F821
        return self.sup.startup_ms

    @dbus_property(access=PropertyAccess.READ)
    def StartupKernelMs(self) -> "d":  # noqa: F821
        """Of StartupMs, the time the emulated kernel took to answer gvtd's writes (its
        creates, with their uevents): what a real kernel would have spent instead."""
        return self.sup.startup_kernel_ms


class Supervisor:
    def __init__(self, args: argparse.Namespace) -> None:
        from gvtd.sim.host import EmulatedHost

        self.args = args
        self.own_workdir = args.config_dir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="gvtd-sim-"))
        self.config_dir: Path = args.config_dir or self.workdir / "etc"
        self.state_dir: Path = args.state_dir or self.workdir / "state"
        self.runtime_dir: Path = args.runtime_dir or self.workdir / "run"
        profile, params = parse_profile(args.simulate_profile)
        self.host = EmulatedHost(profile, **params)
        self.kmsg = KmsgOps()  # the emulated /dev/kmsg (workdir/kmsg/kmsg)
        self.host.printk = lambda text: self.kmsg.emit(text, level=LOG_INFO)
        self.child: asyncio.subprocess.Process | None = None
        self.startup_ms = 0.0
        self.startup_kernel_ms = 0.0
        # The emulated machine's logind, unless the caller brings a system bus (a test's
        # own logind) or gvtd serves the system bus itself (--system).
        self.logind: Logind | None = None
        self.bus: MessageBus | None = None
        self._suspend = ""  # gvtd's Manager.Suspend, as its signals last said
        self._suspend_changed = asyncio.Event()
        self.stopping = asyncio.Event()
        self.restarting = False
        self._watcher: asyncio.Future[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self.notify_path = self.workdir / "notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.notify.bind(str(self.notify_path))
        self.notify.setblocking(False)

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        settings = self.config_dir / "gvtd.toml"
        if not settings.exists():
            node = self.workdir / "libvirt-test-node.xml"
            node.write_text(LIBVIRT_TEST_NODE)
            settings.write_text("# Written by gvtd --simulate.\n"
                                f'libvirt_uri = "test://{node}"\n'
                                + machine.settings_toml(self.workdir))

    def _on_notify(self) -> None:
        try:
            data = self.notify.recv(4096).decode(errors="replace")
        except BlockingIOError:
            return
        # Only READY matters here: the supervisor reports its own READY=1 once, and never
        # blocks its loop forwarding the daemon's STATUS lines to a reader that may be gone.
        lines = data.splitlines()
        if "READY=1" in lines and self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        if "WATCHDOG=1" in lines:
            self._forward_watchdog()

    def _forward_watchdog(self) -> None:
        """The daemon's watchdog pings (WATCHDOG_USEC set for the simulation), passed on to
        whoever supervises the simulation, as systemd would see them: a test can tell that
        gvtd's loop keeps turning. Dropped, never waited for, when nobody reads them."""
        target = os.environ.get("NOTIFY_SOCKET", "")
        if not target.startswith("/"):
            return
        try:
            self.notify.sendto(b"WATCHDOG=1", target)
        except OSError:
            pass  # the reader is gone or not reading: a ping lost, as a full socket loses it

    async def start_daemon(self) -> None:
        """Start gvtd as a child on the emulated host and wait for its READY=1."""
        env = dict(os.environ, UMOCKDEV_DIR=str(self.host.root),
                   NOTIFY_SOCKET=str(self.notify_path))
        env.pop("JOURNAL_STREAM", None)
        if self.logind is not None:
            env["DBUS_SYSTEM_BUS_ADDRESS"] = self.logind.address
        cmd = [sys.executable, "-m", "gvtd.daemon", f"--{self.args.bus}",
               "--config-dir", str(self.config_dir), "--state-dir", str(self.state_dir),
               "--runtime-dir", str(self.runtime_dir),
               "--machine-id-file", str(self.workdir / machine.MACHINE_ID_FILE)]
        if self.args.log_level:
            cmd += ["--log-level", self.args.log_level]
        self._ready = asyncio.get_running_loop().create_future()
        writes = len(self.host.write_log())
        started = time.monotonic()
        self.child = await asyncio.create_subprocess_exec(*cmd, env=env)
        exited = asyncio.ensure_future(self.child.wait())
        done, _ = await asyncio.wait({self._ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        if self._ready not in done:
            raise RuntimeError(f"gvtd exited with status {self.child.returncode} before it "
                               "was ready")
        exited.cancel()
        self._watcher = asyncio.ensure_future(self._watch(self.child))
        self.startup_ms = (time.monotonic() - started) * 1000
        self.startup_kernel_ms = sum(w.seconds for w in self.host.write_log()[writes:]) * 1000
        log.info("gvtd (pid %d) ready in %.0f ms", self.child.pid, self.startup_ms)

    async def stop_daemon(self) -> None:
        # gvtd waits for its kernel writes before it exits: a stalled one would keep it
        self.host.release_writes()
        if self.child is not None and self.child.returncode is None:
            self.child.send_signal(signal.SIGTERM)
            await self.child.wait()

    async def restart(self, reboot: bool = False) -> None:
        self.restarting = True
        try:
            await self.stop_daemon()
            if reboot:
                self.host.forget_mdevs()
                self.host.forget_vfs()
                machine.new_boot(self.kmsg, self.workdir)
                log.info("Rebooted the emulated host: every mdev and VF is gone")
            await self.start_daemon()
        finally:
            self.restarting = False

    async def reboot(self) -> None:
        """What a reboot does: gvtd stops, the kernel forgets every mdev and VF (SR-IOV
        autoprobe back to 1, driver overrides cleared, drivers bound as at boot), gvtd
        starts."""
        await self.restart(reboot=True)

    def vanish_after_create(self, type_id: str, times: int) -> None:
        left = [times]

        def fault(when: str, path: str, data: str) -> None:
            if when == "after" and path.endswith(f"/{type_id}/create") and left[0] > 0:
                left[0] -= 1
                uuid = data.strip().lower()
                # after the write has returned, as a separate kernel event
                threading.Thread(target=self.host.remove_mdev, args=(uuid,)).start()

        self.host.set_fault(fault)

    def kill_on_write(self, suffix: str, phase: str) -> None:
        def fault(when: str, path: str, data: str) -> None:
            child = self.child
            if when != phase or not path.endswith(suffix) or child is None:
                return
            self.host.set_fault(None)  # once
            log.warning("Killing gvtd (pid %d) %s its write to %s", child.pid, phase, path)
            os.kill(child.pid, signal.SIGKILL)
            if phase == "before":
                raise OSError(errno.EINTR, "killed before the write")

        self.host.set_fault(fault)

    async def prepare_for_sleep(self, sleeping: bool) -> None:
        """Have logind announce sleep or resume, then wait (on gvtd's signals) until gvtd
        is done with it."""
        if self.logind is None:
            raise RuntimeError("This simulation runs no logind of its own (it serves "
                               "--system, or DBUS_SYSTEM_BUS_ADDRESS named a system bus "
                               "when it started): send PrepareForSleep from that bus's logind.")
        assert self.bus is not None
        reply = await self.bus.call(Message(
            destination=names.BUS_NAME, path=names.ROOT_PATH, interface=PROPERTIES,
            member="Get", signature="ss", body=[names.MANAGER_IFACE, "Suspend"]))
        if reply is not None and reply.message_type == MessageType.METHOD_RETURN:
            self._suspend = reply.body[0].value
        await self.logind.prepare_for_sleep(sleeping)
        done = {"sleeping", "off"} if sleeping else {"on", "blocked", "off"}
        try:
            async with asyncio.timeout(30):
                while self._suspend not in done:
                    self._suspend_changed.clear()
                    await self._suspend_changed.wait()
        except TimeoutError:
            raise TimeoutError(f"gvtd did not act on PrepareForSleep({str(sleeping).lower()}) "
                               f"within 30 s: its Manager.Suspend is {self._suspend!r}") from None

    def _on_gvtd_signal(self, msg: Message) -> None:
        if msg.member == "PropertiesChanged" and msg.path == names.ROOT_PATH and msg.body \
                and msg.body[0] == names.MANAGER_IFACE and "Suspend" in msg.body[1]:
            self._suspend = msg.body[1]["Suspend"].value
            self._suspend_changed.set()

    async def _start_logind(self) -> None:
        """The emulated machine's logind, so that suspend is simulated too; without it
        gvtd runs on with suspend handling off."""
        if self.args.bus != "session" or "DBUS_SYSTEM_BUS_ADDRESS" in os.environ:
            return
        logind = Logind()
        try:
            await logind.start()
            await logind.add_desktop(self.workdir / "desktop-run")
        except (RuntimeError, OSError, asyncio.TimeoutError) as e:
            log.warning("Suspend is not simulated: %s", e)
            await logind.stop()
            return
        self.logind = logind

    async def _watch(self, child: asyncio.subprocess.Process) -> None:
        """Restart gvtd when it dies on its own, as systemd's Restart=on-failure would."""
        code = await child.wait()
        if self.stopping.is_set() or self.restarting or child is not self.child:
            return
        log.warning("gvtd exited with status %s; restarting it", code)
        try:
            await self.start_daemon()
        except RuntimeError as e:
            log.error("%s; giving up", e)
            self.stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_reader(self.notify.fileno(), self._on_notify)
        self._write_config()
        self.host.start()
        kmsg_dir = self.workdir / machine.KMSG_DIR
        kmsg_dir.mkdir(exist_ok=True)
        try:
            serve_kmsg(self.kmsg, str(kmsg_dir))
            machine.install(machine.facts_for(parse_profile(self.args.simulate_profile)[0]),
                            self.host, self.workdir, self.kmsg)
            await self._start_logind()
            bus_type = BusType.SESSION if self.args.bus == "session" else BusType.SYSTEM
            bus = self.bus = await MessageBus(bus_type=bus_type).connect()
            bus.add_message_handler(self._on_gvtd_signal)
            await bus.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                body=[f"type='signal',sender='{names.BUS_NAME}',path='{names.ROOT_PATH}',"
                      f"interface='{PROPERTIES}',member='PropertiesChanged'"]))
            bus.export(names.SIMULATOR_PATH, SimulatorInterface(self))
            try:
                reply = await bus.request_name(names.SIMULATOR_BUS_NAME, NameFlag.DO_NOT_QUEUE)
            except DBusError as e:
                log.error("Cannot own %s on the %s bus: its policy refuses it (%s). The "
                          "bus's configuration decides: it needs an <allow own=\"%s\"/> for "
                          "this user (dbus-policy/io.github.gvtd1.conf grants only %s)",
                          names.SIMULATOR_BUS_NAME, self.args.bus, e.text,
                          names.SIMULATOR_BUS_NAME, names.BUS_NAME)
                return 1
            if reply != RequestNameReply.PRIMARY_OWNER:
                log.error("Another simulation already owns %s on this bus",
                          names.SIMULATOR_BUS_NAME)
                return 1
            try:
                await self.start_daemon()
            except RuntimeError as e:
                code = self.child.returncode if self.child else None
                if code != 1:  # 1: gvtd has said why on its stderr, in one line
                    log.error("%s", e)
                return 1
            sd_daemon.notify("READY=1")
            log.info("Emulated host (%s) at %s; gvtd serves %s on the %s bus",
                     self.args.simulate_profile, self.host.root, names.BUS_NAME, self.args.bus)
            lost = asyncio.ensure_future(bus.wait_for_disconnect())
            stop = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait({lost, stop}, return_when=asyncio.FIRST_COMPLETED)
            self.stopping.set()
            await self.stop_daemon()
            bus.disconnect()
            return 0
        finally:
            if self.logind is not None:
                await self.logind.stop()
            unmount(str(kmsg_dir))
            self.host.close()
            self.notify.close()
            if self.own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                shutil.rmtree(self.workdir / "notify", ignore_errors=True)


def parse_profile(text: str) -> tuple[str, dict[str, int]]:
    """`multi:n=16,ports=32` -> ("multi", {"n": 16, "ports": 32})."""
    name, _, rest = text.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise ValueError(f"{item!r} is not KEY=NUMBER")
        params[key] = int(value)
    return name, params


def _preloaded() -> bool:
    return PRELOAD in os.environ.get("LD_PRELOAD", "")


def main(args: argparse.Namespace) -> int:
    """Entry for `gvtd --simulate`: re-executes itself under umockdev-wrapper if needed, since
    the preload must be in place before the interpreter starts."""
    from gvtd.sim import kernel

    if args.simulate_profile == "help":
        for name, text in kernel.describe().items():
            print(f"{name:16} {text}")
        return 0
    try:
        name, params = parse_profile(args.simulate_profile)
        if name in kernel.PROFILES:
            kernel.make_kernel(name, **params)  # parameters the profile does not take fail here
    except (ValueError, TypeError) as e:
        print(f"gvtd: bad simulation profile {args.simulate_profile!r}: {e}", file=sys.stderr)
        return 2
    if name not in kernel.PROFILES:
        print(f"gvtd: unknown simulation profile {args.simulate_profile!r}; "
              "`gvtd --simulate --simulate-profile help` lists them", file=sys.stderr)
        return 2
    if not _preloaded():
        wrapper = shutil.which("umockdev-wrapper")
        if wrapper is None:
            print("gvtd: --simulate needs umockdev-wrapper (Debian package umockdev)",
                  file=sys.stderr)
            return 1
        os.execv(wrapper, [wrapper, sys.executable, "-m", "gvtd.daemon", *sys.argv[1:]])
    logging.basicConfig(level=(args.log_level or "info").upper(), format="%(name)s: %(message)s")
    return asyncio.run(Supervisor(args).run())

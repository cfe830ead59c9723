"""gvtd: wiring, command line, logging, sd_notify, signals and the one event loop."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from dbus_fast import BusType, DBusError, Message
from dbus_fast.aio import MessageBus
from dbus_fast.constants import NameFlag, RequestNameReply
from systemd import daemon as sd_daemon

from gvtd import __version__, names
from gvtd.backend import Backends
from gvtd.background import Background, Problem, why
from gvtd.bus.flow import patient
from gvtd.config import DEFAULT_CONFIG_DIR, MACHINE_ID_FILE, ConfigDir
from gvtd.desktop import Desktop
from gvtd.domains import Domains
from gvtd.errors import InvalidArgument
from gvtd.health import SHUTDOWN_TIMEOUT, Health
from gvtd.host import Host
from gvtd.kmsg import Cursor, KernelLog, boot_id
from gvtd.mdev import MdevBackend
from gvtd.session import Logind
from gvtd.sriov import PciSriov, SriovBackend
from gvtd.state import Ownership
from gvtd.status import Status
from gvtd.suspend import Suspend
from gvtd.udev import UdevWatcher
from gvtd.vfslots import VfSlots

if TYPE_CHECKING:
    from gvtd.newvm import NewVm

log = logging.getLogger("gvtd")

LIBVIRT_CLOSE_WAIT = 3.0  # seconds a stop waits for libvirtd to answer the close
WORKERS_WAIT = 5.0  # seconds the exit waits for the worker threads' last kernel or disk work

# gvtd.toml settings that Reload cannot apply to a running gvtd: the host's model reads
# that sysfs, and the udev monitor follows it, from the start; so is the kernel log.
RESTART = ("sysfs_root", "kernel_log")

DESCRIPTION = """\
Keeps Intel GVT-g virtual GPUs (mdevs) as defined in /etc/gvtd/vgpus.d, recreates them at
boot and whenever their parent registers, and offers everything on D-Bus as io.github.gvtd1.
Control it with gvt-client.
"""

EPILOG = """\
environment:
  GVTD_CONFIG_DIR    configuration directory (default /etc/gvtd)
  STATE_DIRECTORY    where gvtd remembers which mdevs it created (default /var/lib/gvtd;
                     systemd sets it from StateDirectory=)
  RUNTIME_DIRECTORY  runtime files (default /run/gvtd; systemd sets it from RuntimeDirectory=)
  (the flags above win over these; with --simulate, too)

simulation:
  gvtd --simulate runs this same daemon over an emulated Kaby Lake host (an emulated kernel
  under a fake /sys, and a libvirt test driver with a `win10` domain) on the session bus,
  so you can try the API without the hardware:
    gvtd --simulate &  gvt-client --session list
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line; gvtd(8) is generated from it (gvtd.manpages)."""
    p = argparse.ArgumentParser(prog="gvtd", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"gvtd {__version__}")
    p.add_argument("--config-dir", type=Path,
                   help="configuration directory with gvtd.toml and vgpus.d/ "
                        "(default: $GVTD_CONFIG_DIR or /etc/gvtd)")
    p.add_argument("--state-dir", type=Path,
                   help="state directory (default: $STATE_DIRECTORY or /var/lib/gvtd)")
    p.add_argument("--runtime-dir", type=Path,
                   help="runtime directory (default: $RUNTIME_DIRECTORY or /run/gvtd)")
    p.add_argument("--machine-id-file", type=Path, default=MACHINE_ID_FILE, metavar="FILE",
                   help="the machine id that the UUIDs of definitions written without one "
                        "are derived from (default: /etc/machine-id; the simulation gives "
                        "its own)")
    bus = p.add_mutually_exclusive_group()
    bus.add_argument("--system", dest="bus", action="store_const", const="system",
                     help="serve on the system bus (the default; with --simulate: the bus "
                          "named by DBUS_SYSTEM_BUS_ADDRESS)")
    bus.add_argument("--session", dest="bus", action="store_const", const="session",
                     help="serve on the session bus (the default with --simulate)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="log level (default: log_level from gvtd.toml, else info)")
    p.add_argument("--simulate", action="store_true",
                   help="run over an emulated GVT-g host instead of the real one (see below)")
    p.add_argument("--simulate-profile", default="default", metavar="NAME",
                   help="emulated host to use with --simulate (default: a Kaby Lake laptop; "
                        "`--simulate-profile help` lists them); NAME:KEY=N,... sets its "
                        "parameters, e.g. multi:n=16,ports=32")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.bus is None:
        args.bus = "session" if args.simulate else "system"
    # Flags win over the environment. The simulation picks its own directories when
    # neither names one.
    config = os.environ.get("GVTD_CONFIG_DIR")
    args.config_dir = args.config_dir or (Path(config) if config else None)
    args.state_dir = args.state_dir or _env_dir("STATE_DIRECTORY")
    args.runtime_dir = args.runtime_dir or _env_dir("RUNTIME_DIRECTORY")
    if not args.simulate:
        args.config_dir = args.config_dir or DEFAULT_CONFIG_DIR
        args.state_dir = args.state_dir or Path("/var/lib/gvtd")
        args.runtime_dir = args.runtime_dir or Path("/run/gvtd")
    return args


def _env_dir(variable: str) -> Path | None:
    """systemd may pass several colon-separated directories; the first is ours."""
    first = os.environ.get(variable, "").split(":")[0]
    return Path(first) if first else None


def _journal_attached() -> bool:
    """True when stderr is the journal stream systemd connected us to (JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    if _journal_attached():
        from systemd.journal import JournalHandler

        handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="gvtd")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("gvtd: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())


class Daemon:
    """Owns the loop's lifetime: start, READY=1, serve, stop on a signal or a lost bus."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config = ConfigDir(args.config_dir, args.machine_id_file)
        self.settings, self.settings_problems = self.config.load_settings()
        sysfs = Path(self.settings.sysfs_root)
        # The SR-IOV backend asks, when it reads, which definitions are its own (the host's),
        # which domains run (made just below) and what gvtd.toml sets now.
        self.sriov = SriovBackend(PciSriov(sysfs), VfSlots(args.state_dir),
                                  lambda: self.host.vf_parents(),
                                  lambda uuid: self.domains.running_user(uuid),
                                  lambda: self.settings.sriov_vfs)
        self.backends = Backends([MdevBackend(sysfs), self.sriov])
        self.host = Host(self.config, self.backends,
                         Ownership(args.state_dir), self.settings.restore_removed)
        self.domains = Domains(self.host, self.settings.libvirt_uri, sysfs, args.state_dir,
                               Path(self.settings.qemu_conf), Desktop(Logind(), sysfs))
        self.suspend = Suspend(self.host, self.domains, self.settings.suspend, self.host.publish)
        # Start-up steps beside READY (libvirt, suspend handling): a failure is a Problem.
        self.starting = Background(self.host.publish)
        self.health = Health(Path(self.settings.sysfs_root), lambda: self.host.mdevs,
                             self._name_of, self.domains.running_user, self.host.publish,
                             lambda d: self.domains.stop_domain(d, False, SHUTDOWN_TIMEOUT),
                             self.settings.on_guest_fault)
        self.host.listeners.append(self.health.published)
        self.host.attach(self.domains)
        self.status = Status(self.host, [self.domains.problems, self.suspend.problems,
                                         self._restart_problems, self.starting.problems,
                                         self.health.problems])
        self.wanted = self.settings  # gvtd.toml as last loaded: what a restart would run
        self._reloading = asyncio.Lock()
        self._libvirt_started: asyncio.Future[None] | None = None
        self._suspend_started: asyncio.Future[None] | None = None
        self.ready = False
        self._last_status = ""
        self.stopping = asyncio.Event()
        self.abandoned = False  # a worker thread is left blocked at exit: see serve()

    @property
    def newvm(self) -> NewVm:
        """NewDomain's maker, over the roots gvtd.toml names now."""
        from gvtd.newvm import NewVm  # only for NewDomain: not on the way to READY=1

        return NewVm(self.host, self.domains, Path(self.settings.procfs_root))

    def _name_of(self, uuid: str) -> str:
        view = self.host.views.get(uuid)
        return view.name if view else ""

    def _kernel_log(self) -> KernelLog | None:
        """The kernel log gvtd follows for the vGPUs' health (kernel_log in gvtd.toml)."""
        if not self.settings.kernel_log:
            return None
        boot = boot_id(Path(self.settings.procfs_root) / "sys/kernel/random/boot_id")
        return KernelLog(Path(self.settings.kernel_log), Cursor(self.args.state_dir, boot),
                         self.health.on_records)

    async def reload(self) -> None:
        """Manager.Reload: apply what changed in gvtd.toml, live where it can be (see
        RESTART), then re-read the definitions. A gvtd.toml that fails validation, or a
        new suspend policy while the host sleeps (Busy), changes nothing."""
        async with self._reloading:
            settings, problems = self.config.load_settings()
            if problems:
                self.host.reject_settings(problems)
                raise InvalidArgument(
                    "gvtd.toml is invalid, so nothing was reloaded: "
                    + "; ".join(str(p) for p in problems)
                    + ". Fix it and run `gvt-client reload` again.")
            old = self.settings
            if settings.suspend != old.suspend:
                await _cancel_start(self._suspend_started)
                await self.suspend.switch(settings.suspend)  # Busy: nothing changed yet
                self.starting.succeeded("suspend")  # started anew
            if settings.libvirt_uri != old.libvirt_uri:
                await _cancel_start(self._libvirt_started)
                self.domains.retarget(settings.libvirt_uri)
                self.starting.succeeded("libvirt")  # started anew
            if settings.restore_removed != old.restore_removed:
                log.info("restore_removed is now %s", str(settings.restore_removed).lower())
            self.host.set_restore_removed(settings.restore_removed)
            self.health.on_guest_fault = settings.on_guest_fault
            self.domains.qemu_conf = Path(settings.qemu_conf)
            if settings.log_level != old.log_level and self.args.log_level is None:
                logging.getLogger().setLevel(settings.log_level.upper())
                log.info("Log level is now %s", settings.log_level)
            self.wanted = settings
            self.settings = settings.model_copy(
                update={k: getattr(old, k) for k in RESTART})
            for key in RESTART:
                if getattr(settings, key) != getattr(old, key):
                    log.warning("%s changed in gvtd.toml; it takes effect when gvtd restarts",
                                key)
            await self.host.reload()

    def _restart_problems(self) -> list[tuple[str, str, str, str]]:
        """A setting changed in gvtd.toml that only a restart applies."""
        return [(f"settings:restart:{key}", "warn",
                 f"{key} is {getattr(self.wanted, key)!r} in gvtd.toml, but gvtd uses "
                 f"{getattr(self.settings, key)!r} until it restarts.",
                 "Restart gvtd (systemctl restart gvtd) to use it.")
                for key in RESTART if getattr(self.wanted, key) != getattr(self.settings, key)]

    def _notify(self, text: str) -> None:
        try:
            sd_daemon.notify(text)
        except OSError as e:  # the service manager went away: not a reason to stop serving
            log.debug("sd_notify failed: %s", e)

    @property
    def state(self) -> str:
        if not self.ready:
            return "starting"
        errors = [p for p in self.status.problems() if p[1] == "error"]
        return "degraded" if errors else "running"  # warnings are advice, not a fault

    def _status(self) -> None:
        summary = self.status.summary()
        if summary != self._last_status:
            self._last_status = summary
            self._notify(f"STATUS={summary}")

    def _start_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        """Ping systemd's watchdog from the event loop itself, so that a stuck loop (and
        only that) gets gvtd restarted. The only timer gvtd runs."""
        try:
            usec = int(os.environ.get("WATCHDOG_USEC", "0"))
            pid = int(os.environ.get("WATCHDOG_PID", str(os.getpid())))
        except ValueError:
            return
        if usec <= 0 or pid != os.getpid():
            return
        interval = usec / 2 / 1_000_000

        def ping() -> None:
            self._notify("WATCHDOG=1")
            loop.call_later(interval, ping)

        ping()

    async def run(self) -> int:
        from gvtd.bus.service import ObjectTree

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        bus_type = BusType.SESSION if self.args.bus == "session" else BusType.SYSTEM
        try:
            bus = patient(await MessageBus(bus_type=bus_type, negotiate_unix_fd=True).connect())
        except Exception as e:
            log.error("Cannot connect to the %s bus: %s", self.args.bus, e)
            return 1
        for p in self.settings_problems:
            log.error("Invalid setting, using the default: %s", p)
        self.host.load(self.settings_problems)
        self.sriov.slots.load()  # after Ownership.load cleared the state directory
        tree = ObjectTree(bus, self)
        self.host.listeners.append(self._status)
        # Subscribe to uevents before the first read of sysfs: a parent that registers
        # in between is then seen either by the read or by its event.
        watcher = UdevWatcher(self.host.on_uevents, self.backends.classify)
        watcher.start(loop)
        async with self.host.lock:
            await self.host.reconcile()
        try:
            reply = await bus.request_name(names.BUS_NAME, NameFlag.DO_NOT_QUEUE)
        except DBusError as e:  # the policy's answer is an error, not a reply code
            log.error("Cannot own %s on the %s bus: its policy refuses it (%s). The bus's "
                      "configuration decides, through dbus-policy/io.github.gvtd1.conf "
                      "(installed as /usr/share/dbus-1/system.d/io.github.gvtd1.conf, read "
                      "when the bus starts or reloads) and gvtd must run as root",
                      names.BUS_NAME, self.args.bus, e.text)
            return 1
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            log.error("Cannot own %s on the %s bus: another gvtd is running, or the bus policy "
                      "does not allow it (is io.github.gvtd1.conf installed?)",
                      names.BUS_NAME, self.args.bus)
            return 1
        self.ready = True
        tree.manager.refresh()
        self._last_status = self.status.summary()
        self._notify(f"READY=1\nSTATUS={self._last_status}")
        log.info("Ready: %s", self.status.summary())
        # libvirt may be down or slow to answer: it never delays READY, and gvtd keeps
        # trying in the background.
        self._libvirt_started = libvirt_started = self.starting.spawn(
            self.domains.start(), "libvirt", lambda e: _start_failed("libvirt", e))
        # logind, like libvirt, may be absent: suspend handling starts beside READY.
        self._suspend_started = suspend_started = self.starting.spawn(
            self.suspend.start(), "suspend", lambda e: _start_failed("suspend handling", e))
        kernel_log = self._kernel_log()
        if kernel_log is not None:  # like libvirt: never delays READY, a failure is a Problem
            self.starting.spawn(kernel_log.start(), "kernel-log",
                                lambda e: _start_failed("kernel log", e))
        self._start_watchdog(loop)
        disconnected = asyncio.ensure_future(bus.wait_for_disconnect())
        stop = asyncio.ensure_future(self.stopping.wait())
        done, _ = await asyncio.wait({disconnected, stop}, return_when=asyncio.FIRST_COMPLETED)
        if disconnected in done:
            log.error("Lost the connection to the D-Bus daemon; exiting so that systemd "
                      "restarts gvtd")
            return 1
        watcher.stop()
        if kernel_log is not None:
            kernel_log.stop()
            await kernel_log.cursor.flushed()  # a restart must not show these again
        libvirt_started.cancel()
        closing = self.domains.close()
        suspend_started.cancel()
        self.suspend.close()
        self._notify("STOPPING=1")
        log.info("Stopping; vGPUs stay in place for the VMs that use them")
        await _abandon_calls(bus)
        bus.disconnect()
        if closing is not None:
            done, _ = await asyncio.wait({closing}, timeout=LIBVIRT_CLOSE_WAIT)
            if not done:
                log.warning("libvirtd did not answer the close of gvtd's connection within "
                            "%.0f s (it hangs); exiting without waiting for it",
                            LIBVIRT_CLOSE_WAIT)
                self.abandoned = True
        return 0


async def _abandon_calls(bus: MessageBus) -> None:
    """Calls still in flight (a StopDomain waiting for a guest that ignores ACPI) must not
    hold up the stop: cancel them, so each caller gets Busy saying gvtd is stopping instead
    of NoReply, then make sure those replies left (a Ping answered after them)."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=5)
    try:
        await asyncio.wait_for(bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus.Peer", member="Ping")), 5)
    except (asyncio.TimeoutError, OSError, EOFError) as e:
        log.debug("Could not flush the last replies: %s", e)


async def _cancel_start(task: "asyncio.Future[None] | None") -> None:
    """A start (of libvirt or suspend handling) still under way at a reload is given up,
    so that it cannot finish on the old setting after the new one is applied."""
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task})


def _start_failed(what: str, e: BaseException) -> Problem:
    return (f"start:{what.replace(' ', '-')}", "error",
            f"Starting {what} failed ({why(e)}); gvtd runs on without it.",
            "Restart gvtd (systemctl restart gvtd); if it fails again, report the journal "
            "lines (journalctl -u gvtd).")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.simulate:
        from gvtd.sim.supervisor import main as simulate

        return simulate(args)
    config = ConfigDir(args.config_dir)
    settings, _ = config.load_settings()
    setup_logging(args.log_level or settings.log_level)
    return serve(Daemon(args))


def serve(daemon: Daemon) -> int:
    """asyncio.run(daemon.run()), except at the exit: asyncio.run and the interpreter wait
    for every worker thread, and one blocked in an RPC to a hung libvirtd would keep gvtd
    from exiting until systemd kills it. So the workers get WORKERS_WAIT to finish (a kernel
    write, a state file's fsync), then gvtd leaves without them: the log is flushed, and
    every file it writes is replaced atomically, so one cut short leaves the one before."""
    executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="gvtd-worker")
    with asyncio.Runner() as runner:
        runner.get_loop().set_default_executor(executor)
        try:
            code = runner.run(daemon.run())
        except KeyboardInterrupt:  # before run() took SIGINT over
            code = 0
        ended = threading.Thread(target=executor.shutdown, name="gvtd-exit", daemon=True)
        ended.start()
        if not daemon.abandoned:
            ended.join(WORKERS_WAIT)
        if ended.is_alive():
            if not daemon.abandoned:
                log.warning("A worker thread did not finish within %.0f s (libvirtd or the "
                            "kernel does not answer); exiting without it", WORKERS_WAIT)
            logging.shutdown()
            sys.stdout.flush()
            os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())

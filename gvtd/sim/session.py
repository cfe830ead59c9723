"""A private D-Bus bus with `gvtd --simulate` on it: shared by `make demo`, the tests and
the benchmarks, so that all of them start the simulation the same way."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

TIMEOUT = 30.0


# A session bus admits only the uid it runs as. Guests are let in by a policy added to the
# distribution's own session configuration (limits, listen address and all).
SESSION_CONF = Path("/usr/share/dbus-1/session.conf")
GUEST_CONFIG = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <include>{session}</include>
  <policy context="default">
{users}
  </policy>
</busconfig>
"""


class DBusDaemon:
    """A private session-type dbus-daemon. `guests` are the uids that may connect besides
    the bus's own (a test's unprivileged caller); without them it is the plain session bus
    that `make demo`, bench/ and a person get."""

    def __init__(self, guests: Sequence[int] = ()) -> None:
        self.dir: Path | None = None
        cmd = ["dbus-daemon", "--session"]
        if guests:
            self.dir = Path(tempfile.mkdtemp(prefix="gvtd-bus-"))
            config = self.dir / "session.conf"
            users = [os.geteuid(), *guests]
            config.write_text(GUEST_CONFIG.format(session=SESSION_CONF, users="\n".join(
                f'    <allow user="{uid}"/>' for uid in dict.fromkeys(users))))
            cmd = ["dbus-daemon", f"--config-file={config}"]
        self.proc = subprocess.Popen(
            [*cmd, "--nofork", "--nopidfile", "--print-address=1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            self.stop()
            raise RuntimeError("dbus-daemon did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(TIMEOUT)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


class NotifySocket:
    """The receiving end of sd_notify, as systemd holds it."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def wait(self, prefix: str, timeout: float = TIMEOUT) -> str:
        """The next notification line starting with prefix (READY=1, STATUS=, ...)."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.messages:
                if m.startswith(prefix):
                    self.messages.remove(m)
                    return m
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
                raise TimeoutError(f"no {prefix} notification within {timeout:.0f} s")
            self.messages += self.sock.recv(4096).decode().splitlines()

    def close(self) -> None:
        self.sock.close()


# umockdev carries uevents over datagram sockets, whose queue (net.unix.max_dgram_qlen, 10
# by default) stands in for a netlink socket's buffer of hundreds of events; a busy or
# descheduled gvtd would lose events that a kernel would have kept. As root, run the
# simulation in a network namespace of its own (it uses no network; the bus is a path
# socket) with a queue of the size the kernel's buffer really gives.
UEVENT_QUEUE = 1024


def roomy_uevent_queue(cmd: list[str]) -> list[str]:
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        return cmd
    return [unshare, "--net", "sh", "-c",
            f'echo {UEVENT_QUEUE} > /proc/sys/net/unix/max_dgram_qlen && exec "$@"', "sh", *cmd]


class SimulatedHost:
    """`gvtd --simulate` on a bus; ready when its READY=1 arrives."""

    def __init__(self, bus_address: str, profile: str = "default",
                 extra_args: list[str] | None = None, stderr: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="gvtd-sim-run-"))
        self.notify = NotifySocket(self.tmp)
        self.env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=bus_address,
                        NOTIFY_SOCKET=self.notify.path, **(env or {}))
        self.env.pop("JOURNAL_STREAM", None)
        cmd = [sys.executable, "-m", "gvtd.daemon", "--simulate", "--simulate-profile", profile,
               *(extra_args or [])]
        self.proc = subprocess.Popen(roomy_uevent_queue(cmd), env=self.env, stderr=stderr)
        try:
            self.notify.wait("READY=1")
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(TIMEOUT)
        self.notify.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

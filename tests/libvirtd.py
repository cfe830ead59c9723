"""A private libvirtd with the QEMU driver, for tests and benchmarks that need real QEMU
behaviour without touching the host's own libvirt.

libvirtd runs as root in its own mount namespace (`unshare -m`), where a temporary
directory is bound over /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt
and /run/libvirt: domains it defines, QEMU's state and logs all land in that directory, and
the host's files are never written. Its sockets live in the same directory (unix_sock_dir);
it listens on no TCP port. Domains are stopped and the directory removed when it stops.

`libvirtd -d` returns only once its sockets are bound, so waiting for that process to exit
is waiting for the socket, with no polling. The daemon itself is then no child of ours: its
exit is awaited on a pidfd.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TIMEOUT = 60.0

# Bound over the host's directories inside the namespace: name under the temporary
# directory -> the host path it hides.
MOUNTS = {"etc": "/etc/libvirt", "lib": "/var/lib/libvirt", "cache": "/var/cache/libvirt",
          "log": "/var/log/libvirt", "run": "/run/libvirt"}

# Runs inside the namespace. /run/libvirt exists only while a host libvirtd has run; when
# it does not, a tmpfs over /run makes a place for it without creating anything on the host.
# With a bus socket as $2, that bus is the system bus there: libvirtd runs hooks with a
# cleared environment, so a hook finds the system bus only at /run/dbus/system_bus_socket.
# With $5 set, the host's /run/user stays in sight (the users' runtime directories, where
# their sound servers listen), moved back over the tmpfs.
#
# The namespace starts as a copy of every mount on the host, including the FUSE file systems
# of emulated kernels running at that moment (ours or another session's). A copy held by
# libvirtd or its guests keeps such a file system's server waiting after its owner
# unmounted it, so the copies are detached first.
NAMESPACE_SCRIPT = """\
set -e
T="$1"
while read -r _ dir fstype _; do
    case "$fstype" in fuse|fuse.*) umount -l "$(printf '%b' "$dir")" || true ;; esac
done < /proc/self/mounts
if [ -n "$3" ]; then  # swtpm: its logs and certificate authority, outside the host's
    mount -t tmpfs -o mode=0755 tmpfs /var/log; mkdir /var/log/libvirt
    mount --bind "$T/swtpm-localca" /var/lib/swtpm-localca
fi
if [ -n "$4" ]; then ip link set lo up; fi  # a network namespace of its own
mount --bind "$T/etc" /etc/libvirt
mount --bind "$T/lib" /var/lib/libvirt
mount --bind "$T/cache" /var/cache/libvirt
mount --bind "$T/log" /var/log/libvirt
if [ -n "$5" ]; then mkdir "$T/run-user"; mount --bind /run/user "$T/run-user"; fi
if [ ! -d /run/libvirt ] || { [ -n "$2" ] && [ ! -d /run/dbus ]; }; then
    mount -t tmpfs -o mode=0755 tmpfs /run; mkdir /run/libvirt /run/dbus /run/lock
fi
if [ -n "$5" ]; then mkdir -p /run/user; mount --move "$T/run-user" /run/user; fi
mount --bind "$T/run" /run/libvirt
if [ -n "$2" ]; then
    mount -t tmpfs -o mode=0755 tmpfs /run/dbus; ln -s "$2" /run/dbus/system_bus_socket
fi
exec libvirtd --daemon --config "$T/etc/libvirtd.conf" --pid-file "$T/libvirtd.pid"
"""

# QEMU's output goes to files (no virtlogd to run), no cgroups or security labels are
# touched on the host, and the guests run as libvirt-qemu as on a real host.
QEMU_CONF = """\
stdio_handler = "file"
security_driver = "none"
cgroup_controllers = [ ]
"""


def wait_exit(pid: int, timeout: float = TIMEOUT) -> bool:
    """Wait until a process that is not our child exits; False if it is still there."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _state(pid: int) -> str:
    """A process's state letter (R, S, T, ...) from /proc/PID/stat."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


class PrivateLibvirtd:
    """libvirtd on a socket of its own; `uri` is what gvtd and virsh connect to."""

    def __init__(self, hooks: tuple[Path, ...] = (), system_bus: str = "",
                 tpm: bool = False, network: bool = False, run_user: bool = False) -> None:
        """hooks: scripts installed as its etc/libvirt/hooks/qemu.d/, which libvirtd looks
        at when it starts; system_bus: the path of a bus socket to be its system bus;
        tpm: swtpm's log and certificate directories are the temporary directory's too;
        network: libvirtd and its guests in a network namespace of their own, where a
        libvirt network (a bridge, dnsmasq, NAT rules) touches nothing of the host's;
        run_user: its guests see the host's /run/user."""
        self.run_user = run_user
        self.dir = Path(tempfile.mkdtemp(prefix="gvtd-libvirtd-"))
        for name in MOUNTS:
            (self.dir / name).mkdir()
        self.tpm, self.network = tpm, network
        if tpm:
            ca = self.dir / "swtpm-localca"
            ca.mkdir(mode=0o750)
            shutil.chown(ca, "tss", "root")
        (self.dir / "etc" / "qemu").mkdir()
        self.system_bus = system_bus
        for hook in hooks:
            target = self.dir / "etc" / "hooks" / "qemu.d" / hook.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(hook, target)
            target.chmod(0o755)
        self.socket = self.dir / "run" / "libvirt-sock"
        self.uri = f"qemu+unix:///system?socket={self.socket}"
        self.log = self.dir / "log" / "libvirtd.log"
        (self.dir / "etc" / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.dir / "run"}"\n'
            'unix_sock_rw_perms = "0700"\n'
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
            f'log_outputs = "3:file:{self.log}"\n')
        (self.dir / "etc" / "qemu.conf").write_text(QEMU_CONF)
        self.pid = 0
        self.start()

    def start(self) -> None:
        """Start libvirtd (again): returns once it accepts connections on `socket`."""
        for stale in self.dir.glob("run/libvirt*-sock*"):  # a killed libvirtd leaves them
            stale.unlink()
        p = subprocess.run(["unshare", "--mount", "--propagation", "private",
                            *(["--net"] if self.network else []),
                            "sh", "-c", NAMESPACE_SCRIPT, "sh", str(self.dir),
                            self.system_bus, "1" if self.tpm else "",
                            "1" if self.network else "", "1" if self.run_user else ""],
                           capture_output=True, text=True, timeout=TIMEOUT)
        if p.returncode != 0 or not self.socket.is_socket():
            raise RuntimeError(f"libvirtd did not start (status {p.returncode}): "
                               f"{p.stderr.strip()} {self.log_tail()}")
        self.pid = int((self.dir / "libvirtd.pid").read_text())

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop libvirtd by a signal and wait until it is gone; its guests keep running."""
        if self.pid:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            if not wait_exit(self.pid):
                raise RuntimeError(f"libvirtd (pid {self.pid}) did not exit on signal {sig}")
            self.pid = 0

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """libvirtd hung, not dead (SIGSTOP: its socket accepts, nothing answers), and
        continued when the block ends, whatever happens in it."""
        os.kill(self.pid, signal.SIGSTOP)
        try:
            while _state(self.pid) != "T":  # the stop is delivered asynchronously
                pass
            yield
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(["virsh", "-q", "-c", self.uri, *args], capture_output=True,
                           text=True, timeout=TIMEOUT)
        if check and p.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)}: {p.stderr.strip()}")
        return p

    def domstate(self, name: str) -> str:
        return self.virsh("domstate", name).stdout.strip()

    def define(self, xml: str) -> None:
        path = self.dir / "define.xml"
        path.write_text(xml)
        self.virsh("define", str(path))

    def qemu_pid(self, name: str) -> int:
        return int((self.dir / "run" / "qemu" / f"{name}.pid").read_text())

    def clear(self) -> None:
        """Destroy and undefine every domain, so the next test starts from nothing."""
        for name in self.virsh("list", "--all", "--name").stdout.split():
            self.virsh("destroy", name, check=False)
            self.virsh("undefine", name, "--nvram", "--tpm", check=False)  # UEFI, swtpm

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Turn every guest off, stop libvirtd, and remove its directory."""
        if self.pid:
            for name in self.virsh("list", "--name", check=False).stdout.split():
                self.virsh("destroy", name, check=False)
            self.kill(signal.SIGTERM)
        for pidfile in self.dir.glob("run/qemu/*.pid"):  # guests of a killed libvirtd
            try:
                pid = int(pidfile.read_text())
                os.kill(pid, signal.SIGKILL)
                wait_exit(pid)
            except (ValueError, ProcessLookupError):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def domain_xml(name: str, mdev: str | None = None) -> str:
    """A small QEMU (TCG) domain with no disk: it starts, runs the firmware and waits for a
    boot device, which is all these tests need. With `mdev`, an mdev hostdev of that UUID."""
    hostdev = (f"<hostdev mode='subsystem' type='mdev' managed='no' model='vfio-pci' "
               f"display='off'><source><address uuid='{mdev}'/></source></hostdev>"
               if mdev else "")
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os>"
            "<features><acpi/></features>"
            f"<devices>{hostdev}<memballoon model='none'/></devices></domain>")


# The watch's own process: libvirt takes one event loop implementation per process, and
# an in-process test that registered libvirtaio's first would leave none to register here.
POWERDOWN_WATCH = """\
import sys
import libvirt, libvirt_qemu

libvirt.virEventRegisterDefaultImpl()
conn = libvirt.open(sys.argv[1])
seen = []

def powerdown(*args):
    seen.append(True)
    print("POWERDOWN", flush=True)

libvirt_qemu.qemuMonitorEventRegister(conn, conn.lookupByName(sys.argv[2]), "POWERDOWN",
                                      powerdown, None, 0)
print("ready", flush=True)
while not seen:
    libvirt.virEventRunDefaultImpl()
"""


class PowerdownWatch:
    """Tells when QEMU received an ACPI power button press (its POWERDOWN monitor event),
    that is when a shutdown request reached the guest; registered before it returns. It
    listens in a process of its own (see POWERDOWN_WATCH)."""

    def __init__(self, uri: str, name: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", POWERDOWN_WATCH, uri, name],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line != "ready\n":
            self.close()
            raise RuntimeError(f"the POWERDOWN watch did not start: {line!r}")

    def wait(self, timeout: float = TIMEOUT) -> bool:
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            return False
        return self.proc.stdout.readline() == "POWERDOWN\n"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(TIMEOUT)

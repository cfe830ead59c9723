"""A VM's sound on a PipeWire desktop, with real parts: PipeWire 0.3.65 and its pulse
server (pipewire-pulse) running as the stranger (nobody) in /run/user/65534, as a login
session starts them (socket-activated, headless, no devices), gvtd (simulated kernel) on a
private libvirtd whose QEMU runs as libvirt-qemu. The stranger's gvt-client opens the VM's
socket with a pulse server of the stranger's own PipeWire; QEMU must show up as a client
of that PipeWire, and no other uid may reach the socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gvtd import names
from gvtd.client.sound import ACTIVATE  # as systemd's pipewire.socket hands it over
from harness import STRANGER, STRANGER_GID, TIMEOUT, Simulation
from libvirtd import PrivateLibvirtd, domain_xml, wait_exit
from test_sound import (RUNTIME, SOCKET, _qemu_ids, acl, gvtd, home, libvirtd,  # noqa: F401
                        lv, parse_clients, reaches, runtime, session, start_plays, stored)


class PipeWire:
    """PipeWire and pipewire-pulse as the stranger. Each gets its socket bound before it
    starts (socket activation, as systemd does at login), so a client's first call waits
    for the server instead of failing."""

    def __init__(self, home: Path) -> None:
        self.env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8",
                    "XDG_RUNTIME_DIR": str(RUNTIME)}
        pulse = RUNTIME / "pulse"
        pulse.mkdir(mode=0o700)
        os.chown(pulse, STRANGER, STRANGER_GID)
        self.pids = [self._activated(RUNTIME / "pipewire-0", "pipewire"),
                     self._activated(pulse / "native", "pipewire-pulse")]
        assert "on PipeWire 0.3" in self.pactl("info").stdout  # waits until it answers

    def _activated(self, path: Path, *cmd: str) -> int:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(str(path))
            os.chown(path, STRANGER, STRANGER_GID)
            s.listen(64)
            return subprocess.Popen(Simulation.as_stranger(["sh", "-c", ACTIVATE, "sh", *cmd]),
                                    stdin=s, env=self.env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL).pid

    def pactl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """pactl as the stranger, on its session's server (pulse/native) unless -s says."""
        return subprocess.run(Simulation.as_stranger(["pactl", *args]), env=self.env,
                              capture_output=True, text=True, timeout=TIMEOUT)

    def clients(self) -> list[dict[str, str]]:
        """The clients of the stranger's PipeWire, as its pulse server lists them."""
        return parse_clients(self.pactl("list", "clients").stdout)

    def stop(self) -> None:
        for pid in self.pids:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


def vm_server() -> int:
    """The pid of the server gvt-client started on the VM's socket (its pid file), or 0."""
    pid_file = Path(SOCKET).parent / "pid"
    return int(pid_file.read_text()) if pid_file.exists() else 0


def stop_vm_server() -> None:
    """As a crash or a logout would: the server is gone, its socket's file stays."""
    if pid := vm_server():
        os.kill(pid, signal.SIGTERM)
        assert wait_exit(pid)


@pytest.fixture
def pipewire(home: Path) -> Iterator[PipeWire]:
    pw = PipeWire(home)
    yield pw
    stop_vm_server()
    pw.stop()


def test_qemu_plays_into_the_strangers_pipewire(gvtd: Simulation,  # noqa: F811
                                                lv: PrivateLibvirtd,  # noqa: F811
                                                pipewire: PipeWire) -> None:
    lv.define(domain_xml("win"))
    out = session(gvtd, "attach", "win", "g", "--display", "vnc")
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr, out.stderr
    assert f"sound through {SOCKET}, which libvirt-qemu (QEMU) may reach" in out.stdout
    xml = stored(lv)
    assert f"<audio id='2' type='pulseaudio' serverName='unix:{SOCKET}'/>" in xml
    # served by a pulse server of the stranger's PipeWire, not by its pipewire-pulse
    assert "Server Name: PulseAudio (on PipeWire 0.3" in pipewire.pactl(
        "-s", f"unix:{SOCKET}", "info").stdout
    assert vm_server() not in pipewire.pids
    # what was granted: x on two directories and rw on the socket, for libvirt-qemu alone
    assert "user:libvirt-qemu:--x" in acl(RUNTIME) and "other::---" in acl(RUNTIME)
    assert "user:libvirt-qemu:--x" in acl(Path(SOCKET).parent)
    assert {"user:libvirt-qemu:rw-", "group::---", "other::---"} <= set(acl(Path(SOCKET)))
    libvirt_qemu = _qemu_ids()
    assert reaches(*libvirt_qemu, SOCKET)
    assert not reaches(1, 1, SOCKET)  # another uid: the ACLs stop it at the runtime directory
    assert not reaches(*libvirt_qemu, f"{RUNTIME}/pulse/native")  # the main socket: closed
    doctor = session(gvtd, "doctor")
    assert f"[ok  ] {names.CHECK_SOUND}libvirt-qemu@{SOCKET}: " in doctor.stdout
    assert "the ACLs are the only gate" in doctor.stdout

    # The VM's server is gone and its socket's file stays: QEMU would refuse to start.
    stop_vm_server()
    assert Path(SOCKET).is_socket() and not reaches(*libvirt_qemu, SOCKET)
    start_plays(gvtd, lv, xml, pipewire.clients)


def test_a_second_attach_keeps_the_server_that_answers(gvtd: Simulation,  # noqa: F811
                                                       lv: PrivateLibvirtd,  # noqa: F811
                                                       pipewire: PipeWire) -> None:
    """The server that answers is kept, and the socket's ACL entry, once lost, is put
    back (doctor names the socket while it is missing)."""
    lv.define(domain_xml("win"))
    assert session(gvtd, "attach", "win", "g", "--display", "vnc").returncode == 0
    first = vm_server()
    subprocess.run(Simulation.as_stranger(["setfacl", "-x", "u:libvirt-qemu", SOCKET]),
                   check=True, timeout=TIMEOUT)
    assert not reaches(*_qemu_ids(), SOCKET)
    doctor = session(gvtd, "doctor")
    assert f"[FAIL] {names.CHECK_SOUND}libvirt-qemu@{SOCKET}: libvirt-qemu may not reach " \
        f"{SOCKET} " in doctor.stdout
    again = session(gvtd, "attach", "win", "g", "--display", "vnc")
    assert again.returncode == 0 and "already has g attached this way" in again.stdout
    assert vm_server() == first and reaches(*_qemu_ids(), SOCKET)


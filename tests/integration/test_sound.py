"""A VM's sound on the sound server of the person who attached it, with real parts: a
PulseAudio 16 daemon running as the stranger (nobody) in its own runtime directory
/run/user/65534, gvtd (simulated kernel) on a private libvirtd with the QEMU driver, whose
guests run as libvirt-qemu and see the host's /run/user. The stranger runs gvt-client in
its session; QEMU must show up as a client of the stranger's server, and no one else may
reach it."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dbus_fast import Variant

from gvtd import names
from gvtd.virt import domxml
from harness import STRANGER, STRANGER_GID, TIMEOUT, CallError, DBusDaemon, Simulation
from libvirtd import PrivateLibvirtd, domain_xml, wait_exit
from test_libvirtd import on_libvirtd

U1 = "3f1c6a2e-8d4b-4f0a-9c57-1e2d3c4b5a69"
RUNTIME = Path(f"/run/user/{STRANGER}")
SOCKET = names.sound_socket(STRANGER)


class PulseAudio:
    """PulseAudio as the stranger, as a login session starts it: its native socket in the
    runtime directory, a null sink to play into, no cookie shared with anyone."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8",
                    "XDG_RUNTIME_DIR": str(RUNTIME)}
        self.pid = 0
        self.start()

    def start(self) -> None:
        """-D returns once the daemon is up (it reports through a pipe), or fails."""
        p = self.pactl_as_stranger("pulseaudio", "-D", "-n", "--exit-idle-time=-1",
                                   "--use-pid-file=yes", f"--log-target=file:{self.home}/pa.log",
                                   "-L", "module-native-protocol-unix", "-L", "module-null-sink")
        assert p.returncode == 0, p.stderr
        self.pid = int((RUNTIME / "pulse" / "pid").read_text())

    def stop(self) -> None:
        """As a logout does: the server and what it served are gone."""
        if self.pid:
            os.kill(self.pid, signal.SIGTERM)
            assert wait_exit(self.pid)
            self.pid = 0

    def pactl_as_stranger(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(Simulation.as_stranger(list(args)), env=self.env,
                              capture_output=True, text=True, timeout=TIMEOUT)

    def clients(self) -> list[dict[str, str]]:
        return parse_clients(self.pactl_as_stranger("pactl", "list", "clients").stdout)


def parse_clients(out: str) -> list[dict[str, str]]:
    """`pactl list clients`: each client's properties."""
    return [dict(re.findall(r'^\s+(\S+) = "(.*)"$', block, re.MULTILINE))
            for block in out.split("Client #")[1:]]


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[PrivateLibvirtd]:
    lv = PrivateLibvirtd(run_user=True)
    lv.virsh("version")
    yield lv
    lv.stop()


@pytest.fixture
def lv(libvirtd: PrivateLibvirtd) -> Iterator[PrivateLibvirtd]:
    yield libvirtd
    libvirtd.clear()


@pytest.fixture
def runtime() -> Iterator[Path]:
    """The stranger's runtime directory, as logind makes it (0700, the user's)."""
    made = not RUNTIME.exists()
    RUNTIME.mkdir(mode=0o700, exist_ok=True)
    os.chown(RUNTIME, STRANGER, STRANGER_GID)
    yield RUNTIME
    if made:
        shutil.rmtree(RUNTIME)


@pytest.fixture
def home(runtime: Path) -> Iterator[Path]:
    """The stranger's home, where its sound server keeps its files."""
    home = Path(tempfile.mkdtemp(prefix="gvtd-sound-home-"))
    os.chown(home, STRANGER, STRANGER_GID)
    yield home
    shutil.rmtree(home)


@pytest.fixture
def pulse(home: Path) -> Iterator[PulseAudio]:
    pa = PulseAudio(home)
    yield pa
    pa.stop()


@pytest.fixture
def gvtd(dbus: DBusDaemon, lv: PrivateLibvirtd, tmp_path: Path) -> Iterator[Simulation]:
    for sim in on_libvirtd(dbus, lv, tmp_path):
        sim.client.define(name="g", type="i915-GVTg_V5_4", uuid=U1, start="manual")
        yield sim


def session(sim: Simulation, *args: str) -> subprocess.CompletedProcess[str]:
    """gvt-client as the stranger in its login session (its XDG_RUNTIME_DIR)."""
    return subprocess.run(
        Simulation.as_stranger([sys.executable, "-m", "gvtd.client.main", "--session", *args]),
        env=dict(sim.stranger_env, XDG_RUNTIME_DIR=str(RUNTIME)), cwd=sim.home,
        capture_output=True, text=True, timeout=TIMEOUT)


def stored(lv: PrivateLibvirtd) -> str:
    return lv.virsh("dumpxml", "--inactive", "win").stdout


def acl(path: Path) -> list[str]:
    return subprocess.run(["getfacl", "-cp", str(path)], capture_output=True, text=True,
                          check=True).stdout.split()


def reaches(uid: int, gid: int, socket: str) -> bool:
    """Whether a process of uid:gid (with its groups) gets the server's answer on socket."""
    p = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups",
                        "pactl", "-s", f"unix:{socket}", "info"],
                       env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"},
                       capture_output=True, text=True, timeout=TIMEOUT)
    return p.returncode == 0


def test_qemu_plays_into_the_strangers_own_server(gvtd: Simulation, lv: PrivateLibvirtd,
                                                  pulse: PulseAudio) -> None:
    lv.define(domain_xml("win"))
    out = session(gvtd, "attach", "win", "g", "--display", "vnc")
    assert out.returncode == 0, out.stderr
    assert f"sound through {SOCKET}, which libvirt-qemu (QEMU) may reach" in out.stdout
    xml = stored(lv)
    # libvirt gave the domain <audio id='1' type='none'/> at its define: ours is the next
    assert "<audio id='1' type='none'/>" in xml
    assert f"<audio id='2' type='pulseaudio' serverName='unix:{SOCKET}'/>" in xml
    assert re.search(r"<sound model='ich9'>\s*<audio id='2'/>\s*<alias name='ua-gvtd-sound'/>",
                     xml), xml
    # what was granted: x for libvirt-qemu on two directories, one socket for its group
    assert "user:libvirt-qemu:--x" in acl(RUNTIME) and "other::---" in acl(RUNTIME)
    assert "user:libvirt-qemu:--x" in acl(Path(SOCKET).parent)
    modules = pulse.pactl_as_stranger("pactl", "list", "short", "modules").stdout
    assert f"socket={SOCKET} auth-group=libvirt-qemu auth-cookie-enabled=0" in modules
    libvirt_qemu = _qemu_ids()
    assert reaches(*libvirt_qemu, SOCKET)
    assert not reaches(1, 1, SOCKET)  # daemon: the ACL stops it at the runtime directory
    assert not reaches(0, 0, SOCKET)  # root reaches the socket; the server refuses it
    assert not reaches(*libvirt_qemu, f"{RUNTIME}/pulse/native")  # the main socket: closed

    # A new login: the server forgot the socket, and QEMU would refuse to start. `start`
    # in the session opens it again; QEMU (without the vGPU, which no kernel here has)
    # then connects as libvirt-qemu.
    pulse.stop()
    pulse.start()
    start_plays(gvtd, lv, xml, pulse.clients)


def start_plays(sim: Simulation, lv: PrivateLibvirtd, xml: str,
                clients: Callable[[], list[dict[str, str]]]) -> None:
    """The socket's server is gone (doctor fails); `start` in the session serves it again,
    and QEMU, started without the vGPU that no kernel here has, is a client of the
    stranger's server (clients) as libvirt-qemu; doctor then passes."""
    doctor = session(sim, "doctor")
    assert f"[FAIL] {names.CHECK_SOUND}libvirt-qemu@{SOCKET}: " in doctor.stdout
    lv.define(domxml.detach(xml, U1))
    started = session(sim, "start", "win")
    assert started.returncode == 0, started.stderr
    qemu = [c for c in clients() if c.get("application.process.binary") == "qemu-system-x86_64"]
    assert [(c["application.name"], c["application.process.user"]) for c in qemu] == \
        [("win", "libvirt-qemu")]
    assert int(qemu[0]["application.process.id"]) == lv.qemu_pid("win")
    doctor = session(sim, "doctor")
    assert f"[ok  ] {names.CHECK_SOUND}libvirt-qemu@{SOCKET}: " in doctor.stdout


def not_wired(lv: PrivateLibvirtd) -> bool:
    """No sound of gvtd's (libvirt's own <audio type='none'/> stays)."""
    xml = stored(lv)
    return "pulseaudio" not in xml and "<sound" not in xml and "<audio id='1' type='none'/>" \
        in xml


def test_no_audio_leaves_it_out_and_takes_out_what_was_there(gvtd: Simulation,
                                                             lv: PrivateLibvirtd,
                                                             pulse: PulseAudio) -> None:
    lv.define(domain_xml("win"))
    assert session(gvtd, "attach", "win", "g", "--display", "vnc", "--no-audio"
                   ).returncode == 0
    assert not_wired(lv)
    assert not Path(SOCKET).exists()  # nothing granted either
    assert session(gvtd, "attach", "win", "g", "--display", "vnc").returncode == 0
    assert "ua-gvtd-sound" in stored(lv)
    assert session(gvtd, "attach", "win", "g", "--display", "vnc", "--no-audio"
                   ).returncode == 0
    assert not_wired(lv)
    assert session(gvtd, "attach", "win", "g", "--display", "vnc").returncode == 0
    gvtd.client.call("DetachVGPU", "ss", ["win", "g"])  # detach takes the sound out too
    assert not_wired(lv)


def test_a_session_without_a_sound_server_leaves_the_sound_as_it_was(
        gvtd: Simulation, lv: PrivateLibvirtd, runtime: Path) -> None:
    """sudo, ssh, a PipeWire desktop: the vGPU is attached, the sound stays as it was, and
    the warning says why; nothing is granted."""
    lv.define(domain_xml("win"))
    out = session(gvtd, "attach", "win", "g", "--display", "vnc")
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert "warning: the VM's sound is left as it was: No sound server answers in this " \
        "session" in out.stderr and "--no-audio" in out.stderr
    assert U1 in stored(lv) and not_wired(lv) and not Path(SOCKET).parent.exists()
    gvtd.client.call("AttachVGPU", "ssa{sv}", ["win", "g", {
        "display": Variant("s", "vnc"), "audio": Variant("b", True)}])
    wired = stored(lv)
    again = session(gvtd, "attach", "win", "g", "--display", "vnc")
    assert again.returncode == 0 and "already has g attached this way" in again.stdout
    assert stored(lv) == wired


def test_the_socket_is_the_callers_own(gvtd: Simulation, lv: PrivateLibvirtd) -> None:
    """gvtd derives the socket from the uid the bus reports; no option names a path, and
    a bad option writes nothing."""
    lv.define(domain_xml("win"))
    before = stored(lv)
    for bad in ({"audio": Variant("s", "yes")},
                {"audio_socket": Variant("s", "/run/user/0/pulse/native")}):
        with pytest.raises(CallError) as e:
            gvtd.client.call("AttachVGPU", "ssa{sv}", ["win", "g", bad])
        assert e.value.name == names.ERROR_PREFIX + "InvalidArgument"
        assert "audio (b" in e.value.text
    assert stored(lv) == before
    dry = {"display": Variant("s", "vnc"), "dry_run": Variant("b", True),
           "audio": Variant("b", True)}
    answer = gvtd.client.call("AttachVGPU", "ssa{sv}", ["win", "g", dry])[0]
    assert answer.endswith(f"{names.SOUND_LINE}libvirt-qemu@{SOCKET}\n")
    assert f"serverName=\"unix:{SOCKET}\"" in answer and stored(lv) == before
    root = gvtd.root_client.call("AttachVGPU", "ssa{sv}", ["win", "g", dry])[0]
    assert f"serverName=\"unix:{names.sound_socket(0)}\"" in root


def test_a_socket_served_for_another_group_is_served_for_qemus(gvtd: Simulation,
                                                               lv: PrivateLibvirtd,
                                                               pulse: PulseAudio) -> None:
    """An earlier grant for another group (QEMU's user changed) is replaced, not doubled."""
    Path(SOCKET).parent.mkdir(mode=0o700)
    os.chown(Path(SOCKET).parent, STRANGER, STRANGER_GID)
    assert pulse.pactl_as_stranger("pactl", "load-module", "module-native-protocol-unix",
                                   f"socket={SOCKET}", "auth-group=nogroup").returncode == 0
    lv.define(domain_xml("win"))
    assert session(gvtd, "attach", "win", "g", "--display", "vnc").returncode == 0
    modules = pulse.pactl_as_stranger("pactl", "list", "short", "modules").stdout
    assert [line.split("\t")[2] for line in modules.splitlines() if SOCKET in line] == [
        f"socket={SOCKET} auth-group=libvirt-qemu auth-cookie-enabled=0"]
    assert reaches(*_qemu_ids(), SOCKET)


def _qemu_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("libvirt-qemu")
    return entry.pw_uid, entry.pw_gid

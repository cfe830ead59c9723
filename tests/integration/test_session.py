"""A GL display follows the caller's desktop session: StartDomain asks logind (python-dbusmock,
on this test's system bus) for the sessions of the uid that calls, and QEMU (real, under a
private libvirtd) gets that session's X display, access to it for its own user only, and
Mesa's EGL on a machine with a second GPU. The desktops are real: Xvfb as an X11 session,
weston's headless backend with Xwayland as a Wayland one. `gvt-client doctor` run in each
says which GL display works there."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import Variant

from gvtd import names
from gvtd.desktop import EGL_VENDOR_ENV, MESA_EGL
from harness import STRANGER, STRANGER_GID, CallError, DBusDaemon, Simulation
from libvirtd import PrivateLibvirtd, domain_xml
from logind import Logind
from test_libvirtd import libvirtd, lv, wait_connected  # noqa: F401 (fixtures)
from wayland import Weston
from xserver import Xvfb

QEMU_USER = "libvirt-qemu"  # the private libvirtd's QEMU user (its build default)
ERR = names.ERROR_PREFIX
STALE = ":9"  # the DISPLAY an attach wrote some logins ago


def gl_domain(name: str, display: str = "gtk-gl") -> str:
    """A small domain as attach leaves it for gtk-gl (QEMU's own GTK window with GL, its
    DISPLAY from attach time) or spice-gl; no vGPU, which QEMU here cannot open."""
    xml = domain_xml(name).replace(
        "<domain type='qemu'>",
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>")
    if display == "gtk-gl":
        return xml.replace("</devices>", "</devices><qemu:commandline>"
                           "<qemu:arg value='-display'/><qemu:arg value='gtk,gl=on'/>"
                           f"<qemu:env name='DISPLAY' value='{STALE}'/>"
                           "<qemu:env name='GDK_SCALE' value='1.0'/></qemu:commandline>")
    return xml.replace("<devices>", "<devices><graphics type='spice'><listen type='none'/>"
                       "<gl enable='yes' rendernode='/dev/dri/renderD128'/></graphics>")


@pytest.fixture
def logind(monkeypatch: pytest.MonkeyPatch) -> Iterator[Logind]:
    """logind on this test's own system bus, which the gvtd started here uses."""
    bus = DBusDaemon(guests=())
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
    mock = Logind(bus)
    yield mock
    mock.stop()
    bus.stop()


@pytest.fixture
def gvtd(dbus: DBusDaemon, logind: Logind, lv: PrivateLibvirtd,
         tmp_path: Path) -> Iterator[Simulation]:
    (tmp_path / "gvtd.toml").write_text(f'libvirt_uri = "{lv.uri}"\n'
                                        f'qemu_conf = "{lv.dir / "etc" / "qemu.conf"}"\n')
    sim = Simulation(dbus, config_dir=tmp_path)
    try:
        if not sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["LibvirtConnected"]:
            wait_connected(sim, True)
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """The stranger's runtime directory (/run/user/UID on a real host)."""
    d = Path(tempfile.mkdtemp(prefix="gvtd-run-"))
    d.chmod(0o700)
    subprocess.run(["chown", f"{STRANGER}:{STRANGER_GID}", str(d)], check=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def x() -> Iterator[Xvfb]:
    server = Xvfb()
    yield server
    server.stop()


def cookie_in(runtime: Path, x: Xvfb) -> None:
    """The X session's cookie where GDM keeps it, the user's alone."""
    (runtime / "gdm").mkdir(mode=0o700)
    shutil.copy(x.auth, runtime / "gdm" / "Xauthority")
    subprocess.run(["chown", "-R", f"{STRANGER}:{STRANGER_GID}", str(runtime / "gdm")],
                   check=True)


def qemu_env(lv: PrivateLibvirtd, name: str) -> dict[str, str]:
    """The environment the running QEMU process has."""
    raw = Path(f"/proc/{lv.qemu_pid(name)}/environ").read_bytes().split(b"\0")
    return dict(e.decode().partition("=")[::2] for e in raw if e)


def env_of(xml: str) -> dict[str, str]:
    import xml.etree.ElementTree as ET

    from gvtd.virt.domxml import Q
    return {e.get("name", ""): e.get("value", "")
            for e in ET.fromstring(xml).iterfind(f"{Q}commandline/{Q}env")}


def start(gvtd: Simulation, name: str) -> None:
    gvtd.client.call("StartDomain", "sa{sv}", [name, {}])


def refused(gvtd: Simulation, name: str) -> CallError:
    with pytest.raises(CallError) as e:
        start(gvtd, name)
    return e.value


def test_x11_session_gives_qemu_its_display_and_access_for_qemu_user_only(
        gvtd: Simulation, lv: PrivateLibvirtd, logind: Logind, x: Xvfb,
        runtime_dir: Path) -> None:
    """The caller's X11 session: QEMU gets its DISPLAY (not attach's stale one), GDK_SCALE
    and access for libvirt-qemu alone, granted with the session's own cookie."""
    cookie_in(runtime_dir, x)
    logind.add_session("c1", STRANGER, "nobody", "x11", x.display, runtime_dir)
    lv.define(gl_domain("win"))
    assert not x.reachable_as(QEMU_USER)
    start(gvtd, "win")
    assert lv.domstate("win") == "running"  # QEMU opened its GTK window on the session
    env = qemu_env(lv, "win")
    assert (env["DISPLAY"], env["GDK_SCALE"], env["GDK_BACKEND"]) == (x.display, "1.0", "x11")
    assert EGL_VENDOR_ENV not in env  # one GPU: EGL's own choice
    listing = x.xhost()
    assert "access control enabled" in listing and "SI:localuser:libvirt-qemu" in listing
    assert "SI:localuser:nobody" not in listing and "LOCAL:" not in listing
    assert x.reachable_as(QEMU_USER) and not x.reachable_as("daemon")
    # this start's XML ran; the definition is as attach left it
    assert env_of(lv.virsh("dumpxml", "win").stdout)["DISPLAY"] == x.display
    assert env_of(lv.virsh("dumpxml", "--inactive", "win").stdout)["DISPLAY"] == STALE
    # off again: the access its start added goes with it
    gvtd.client.call("StopDomain", "sa{sv}", ["win", {"force": Variant("b", True),
                                                     "timeout": Variant("u", 0)}])
    assert x.xhost() == listing.replace("SI:localuser:libvirt-qemu\n", "")
    assert not x.reachable_as(QEMU_USER)


def test_hybrid_graphics_pins_mesa_egl(gvtd: Simulation, lv: PrivateLibvirtd, logind: Logind,
                                       x: Xvfb, runtime_dir: Path) -> None:
    """A second, NVIDIA GPU (an emulated render node): QEMU's EGL is pinned to Mesa."""
    node = gvtd.root / "sys" / "class" / "drm" / "renderD129" / "device"
    node.mkdir(parents=True)
    (node / "vendor").write_text("0x10de\n")
    cookie_in(runtime_dir, x)
    logind.add_session("c1", STRANGER, "nobody", "x11", x.display, runtime_dir)
    lv.define(gl_domain("win"))
    start(gvtd, "win")
    env = qemu_env(lv, "win")
    assert env[EGL_VENDOR_ENV] == str(MESA_EGL) and MESA_EGL.is_file()
    assert env["DISPLAY"] == x.display


def test_wayland_session_gives_gtk_gl_its_xwayland(gvtd: Simulation, lv: PrivateLibvirtd,
                                                   logind: Logind, runtime_dir: Path) -> None:
    """A Wayland session (logind's Display empty): QEMU's window goes to the session's
    Xwayland, found by the X socket the user owns, with access for libvirt-qemu."""
    weston = Weston(STRANGER, STRANGER_GID, runtime_dir)
    try:
        logind.add_session("c2", STRANGER, "nobody", "wayland", "", runtime_dir)
        lv.define(gl_domain("win"))
        start(gvtd, "win")
        assert lv.domstate("win") == "running"
        env = qemu_env(lv, "win")
        assert (env["DISPLAY"], env["GDK_BACKEND"], env["GDK_SCALE"]) == \
            (weston.display, "x11", "1.0")
        assert "WAYLAND_DISPLAY" not in env
        assert "SI:localuser:libvirt-qemu" in xhost_as_stranger(weston.display)
    finally:
        weston.stop()


def xhost_as_stranger(display: str) -> str:
    return subprocess.run(Simulation.as_stranger(["xhost"]), capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "DISPLAY": display}, check=True).stdout


def test_access_is_granted_in_the_session_users_own_credentials(
        gvtd: Simulation, lv: PrivateLibvirtd, logind: Logind, x: Xvfb,
        runtime_dir: Path) -> None:
    """No cookie anywhere: the X server lets the session's user in by name, as GDM's do.
    Only xhost run as that user gets in, and nobody else's access is asked for."""
    logind.add_session("c1", STRANGER, "nobody", "x11", x.display, runtime_dir)
    lv.define(gl_domain("win"))
    before = x.xhost()
    e = refused(gvtd, "win")  # the user cannot open their display: neither can gvtd
    assert e.name == ERR + "Failed" and "could not let libvirt-qemu open X display" in e.text
    assert lv.domstate("win") == "shut off" and x.xhost() == before
    x.xhost("+si:localuser:nobody")
    start(gvtd, "win")
    assert "SI:localuser:libvirt-qemu" in x.xhost() and lv.domstate("win") == "running"


def test_access_granted_before_gvtd_stays_after_the_vm(
        gvtd: Simulation, lv: PrivateLibvirtd, logind: Logind, x: Xvfb,
        runtime_dir: Path) -> None:
    """The desktop's owner let QEMU's user in already (autostart): stopping the VM leaves it."""
    cookie_in(runtime_dir, x)
    x.xhost("+si:localuser:libvirt-qemu")
    logind.add_session("c1", STRANGER, "nobody", "x11", x.display, runtime_dir)
    lv.define(gl_domain("win"))
    before = x.xhost()
    start(gvtd, "win")
    gvtd.client.call("StopDomain", "sa{sv}", ["win", {"force": Variant("b", True),
                                                     "timeout": Variant("u", 0)}])
    assert x.xhost() == before and x.reachable_as(QEMU_USER)


def test_wayland_without_xwayland_says_to_use_spice_gl(
        gvtd: Simulation, lv: PrivateLibvirtd, logind: Logind, runtime_dir: Path) -> None:
    weston = Weston(STRANGER, STRANGER_GID, runtime_dir, xwayland=False)
    try:
        logind.add_session("c2", STRANGER, "nobody", "wayland", "", runtime_dir)
        lv.define(gl_domain("win"))
        e = refused(gvtd, "win")
        assert e.name == ERR + "NotFound" and "spice-gl" in e.text and "virt-viewer" in e.text
        assert lv.domstate("win") == "shut off"
    finally:
        weston.stop()


def test_no_session_is_refused_and_nothing_changes(gvtd: Simulation, lv: PrivateLibvirtd,
                                                   logind: Logind, x: Xvfb) -> None:
    lv.define(gl_domain("win"))
    before = x.xhost()
    e = refused(gvtd, "win")
    assert e.name == ERR + "NotFound" and "no session at all" in e.text, e.text
    assert lv.domstate("win") == "shut off" and x.xhost() == before


def test_another_users_session_is_never_used(gvtd: Simulation, lv: PrivateLibvirtd,
                                             logind: Logind, x: Xvfb,
                                             runtime_dir: Path) -> None:
    """The stranger has a text console; alice's X11 session is the active one on seat0."""
    logind.add_session("c3", 1000, "alice", "x11", x.display, runtime_dir)
    logind.add_session("c4", STRANGER, "nobody", "tty", "", runtime_dir, active=False)
    logind.add_session("c5", STRANGER, "nobody", "x11", x.display, runtime_dir, remote=True)
    lv.define(gl_domain("win"))
    before = x.xhost()
    e = refused(gvtd, "win")
    assert e.name == ERR + "NotFound", e.text
    assert "tty" in e.text and "remote" in e.text and "alice's" in e.text
    assert lv.domstate("win") == "shut off" and x.xhost() == before


def test_spice_gl_without_a_session_is_refused(gvtd: Simulation, lv: PrivateLibvirtd,
                                               logind: Logind) -> None:
    """spice-gl is viewed with virt-viewer in the session (what QEMU gets then: the hybrid
    Wayland test below); without one it is refused like gtk-gl."""
    lv.define(gl_domain("spice", "spice-gl"))
    e = refused(gvtd, "spice")
    assert e.name == ERR + "NotFound" and "no session at all" in e.text


def test_a_display_without_gl_starts_as_before(gvtd: Simulation, lv: PrivateLibvirtd,
                                               logind: Logind) -> None:
    """vnc or none: no session needed, and the definition starts as it is."""
    lv.define(domain_xml("plain"))
    start(gvtd, "plain")
    assert lv.domstate("plain") == "running"
    assert "DISPLAY" not in qemu_env(lv, "plain")


def doctor_in(gvtd: Simulation, session_env: dict[str, str]) -> dict[str, str]:
    """`gvt-client doctor --json` run as the stranger inside a desktop session: its
    display-session finding."""
    env = {k: v for k, v in gvtd.stranger_env.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", "XAUTHORITY")}
    proc = subprocess.run(gvtd.as_stranger([sys.executable, "-m", "gvtd.client.main",
                                            "--session", "doctor", "--json"]),
                          env=dict(env, **session_env), cwd=gvtd.home, capture_output=True,
                          text=True, timeout=60)
    assert "Traceback" not in proc.stderr
    return {c["id"]: c for c in json.loads(proc.stdout)}["display-session"]


def test_doctor_in_a_wayland_session_says_which_display_works(
        gvtd: Simulation, runtime_dir: Path) -> None:
    wayland = {"XDG_SESSION_TYPE": "wayland", "XDG_RUNTIME_DIR": str(runtime_dir),
               "WAYLAND_DISPLAY": "wayland-gvtd"}
    weston = Weston(STRANGER, STRANGER_GID, runtime_dir)
    try:
        check = doctor_in(gvtd, dict(wayland, DISPLAY=weston.display))
        assert check["severity"] == "pass", check
        assert "Wayland session: spice-gl works" in check["message"]
        assert f"gtk-gl works under Xwayland (X display {weston.display})" in check["message"]
    finally:
        weston.stop()
    weston = Weston(STRANGER, STRANGER_GID, runtime_dir, xwayland=False)
    try:
        check = doctor_in(gvtd, wayland)
        assert check["severity"] == "warn" and "gtk-gl does not" in check["message"]
        assert "DMABUF" in check["message"] and "--display spice-gl" in check["fix"]
    finally:
        weston.stop()


def test_doctor_in_an_x11_session(gvtd: Simulation, x: Xvfb, runtime_dir: Path) -> None:
    cookie_in(runtime_dir, x)
    x11 = {"XDG_SESSION_TYPE": "x11", "DISPLAY": x.display,
           "XAUTHORITY": str(runtime_dir / "gdm" / "Xauthority")}
    check = doctor_in(gvtd, x11)
    assert check["severity"] == "pass" and "X11 session" in check["message"]
    assert "gtk-gl" in check["message"], check
    check = doctor_in(gvtd, dict(x11, XAUTHORITY="/nonexistent"))  # no cookie: no display
    assert check["severity"] == "warn" and "does not open" in check["message"]


def qemu_log_env(lv: PrivateLibvirtd, name: str) -> dict[str, str]:
    """The environment libvirt started QEMU with, from the head of the domain's log."""
    head = (lv.dir / "log" / "qemu" / f"{name}.log").read_text().split("/usr/bin/qemu")[0]
    return dict(line.rstrip(" \\").partition("=")[::2] for line in head.splitlines()[1:]
                if "=" in line)


def test_spice_gl_in_a_wayland_session_on_a_hybrid_laptop(
        gvtd: Simulation, lv: PrivateLibvirtd, logind: Logind, runtime_dir: Path) -> None:
    """spice-gl in a Wayland session: QEMU gets no X display (virt-viewer shows it in the
    session), and on a machine with a second GPU Mesa's EGL for the Intel render node.
    There is no render node here, so QEMU then fails on it: what libvirt started it with is
    in the domain's log."""
    node = gvtd.root / "sys" / "class" / "drm" / "renderD129" / "device"
    node.mkdir(parents=True)
    (node / "vendor").write_text("0x10de\n")
    weston = Weston(STRANGER, STRANGER_GID, runtime_dir, xwayland=False)
    try:
        logind.add_session("c2", STRANGER, "nobody", "wayland", "", runtime_dir)
        lv.define(gl_domain("spice", "spice-gl"))
        e = refused(gvtd, "spice")
        assert e.name == ERR + "Failed" and "libvirt could not start spice" in e.text, e.text
        env = qemu_log_env(lv, "spice")
        assert env[EGL_VENDOR_ENV] == str(MESA_EGL)
        assert "DISPLAY" not in env and "GDK_BACKEND" not in env
        assert EGL_VENDOR_ENV not in env_of(lv.virsh("dumpxml", "--inactive", "spice").stdout)
    finally:
        weston.stop()

"""Which logind session a start uses, and the checks on what logind says about it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gvtd import desktop
from gvtd.errors import Failed, NotFound
from gvtd.session import Seen, checked, choose, xwayland_display

ME = os.getuid()


def seen(sid: str, uid: int = ME, kind: str = "x11", **kw: object) -> Seen:
    base: dict[str, object] = dict(id=sid, uid=uid, user="me" if uid == ME else "alice",
                                   seat="seat0", type=kind, display=":0", active=True,
                                   state="active", session_class="user")
    return Seen(**{**base, **kw})  # type: ignore[arg-type]


def test_the_active_local_graphical_session_of_the_caller() -> None:
    ours = [seen("1", kind="tty"), seen("2", active=False, state="online"),
            seen("3", kind="wayland"), seen("4", remote=True), seen("5", uid=ME + 1)]
    assert choose(ME, ours).id == "3"
    assert choose(ME, ours[:2]).id == "2"  # online, not active: still the caller's own
    assert choose(ME, [seen("6", seat="")] + ours[1:2]).id == "2"  # no seat: not a desktop


def test_never_another_users_session() -> None:
    with pytest.raises(NotFound, match="alice's, and a VM is never shown"):
        choose(ME, [seen("1", uid=ME + 1), seen("2", kind="tty")])
    with pytest.raises(NotFound, match="no session at all"):
        choose(1000, [])
    with pytest.raises(NotFound, match="not with sudo"):
        choose(0, [seen("1", uid=1000)])


def test_checked_values(tmp_path: Path) -> None:
    assert checked(seen("1", runtime_path=str(tmp_path))).x_display == ":0"
    for bad in ("localhost:0", ":0; xhost +", "", ":0\n"):
        if bad:
            with pytest.raises(Failed, match="not a local X display"):
                checked(seen("1", display=bad, runtime_path=str(tmp_path)))
    (tmp_path / "link").symlink_to(tmp_path)
    for runtime in (str(tmp_path / "link"), "relative", f"{tmp_path}/../x", str(tmp_path / "missing")):
        with pytest.raises(Failed, match="runtime directory"):
            checked(seen("1", runtime_path=runtime))
    with pytest.raises(Failed, match="runtime directory"):
        checked(seen("1", uid=ME + 1, runtime_path=str(tmp_path)))  # not the user's


def test_xwayland_is_the_x_socket_the_user_owns(tmp_path: Path) -> None:
    (tmp_path / "X3").write_text("")  # not a socket
    for name in ("X7", "X5", "Xfoo"):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(tmp_path / name))
        s.close()
    assert xwayland_display(ME, tmp_path) == ":5"
    assert xwayland_display(ME + 1, tmp_path) == ""
    session = checked(seen("1", kind="wayland", display="", runtime_path=str(tmp_path)),
                      x11_unix=tmp_path)
    assert session.x_display == ":5"


def test_second_gpu_and_gl_display(tmp_path: Path) -> None:
    for node, vendor in (("renderD128", "0x8086"), ("renderD129", "0x10de")):
        (tmp_path / "class/drm" / node / "device").mkdir(parents=True)
        (tmp_path / "class/drm" / node / "device" / "vendor").write_text(vendor + "\n")
    assert desktop.other_gpus(tmp_path) == ["renderD129"]
    assert desktop.gl_display("<domain><devices><graphics type='spice'><gl enable='yes'/>"
                              "</graphics></devices></domain>") == "spice-gl"
    assert desktop.gl_display("<domain><devices><graphics type='vnc'/></devices></domain>") \
        is None


def test_with_env_sets_each_name_once_and_keeps_the_rest() -> None:
    q = "http://libvirt.org/schemas/domain/qemu/1.0"
    xml = (f"<domain xmlns:qemu='{q}'><name>w</name><qemu:commandline>"
           "<qemu:arg value='-display'/><qemu:env name='DISPLAY' value=':9'/>"
           "<qemu:env name='DISPLAY' value=':8'/><qemu:env name='KEEP' value='1'/>"
           "</qemu:commandline></domain>")
    out = desktop.with_env(xml, {"DISPLAY": ":1", "GDK_SCALE": "1.0"})
    assert out.count("name=\"DISPLAY\"") == 1 and "value=\":1\"" in out
    assert "KEEP" in out and "GDK_SCALE" in out and "-display" in out
    fresh = desktop.with_env("<domain><name>w</name></domain>", {"A": "b"})
    assert "<qemu:commandline xmlns:qemu=" in fresh and "qemu:env name=\"A\" value=\"b\"" in fresh

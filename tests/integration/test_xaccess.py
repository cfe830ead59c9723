"""doctor's gtk-gl finding against a real X server: what `xhost` lists is what QEMU's
user can actually open."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gvtd.client import xaccess
from xserver import Xvfb

USER = "nobody"


@pytest.fixture
def x() -> Iterator[Xvfb]:
    server = Xvfb()
    yield server
    server.stop()


def test_verdict_matches_what_the_user_can_open(x: Xvfb) -> None:
    severity, message, fix = xaccess.verdict(x.xhost(), USER, x.display)
    assert severity == "warn" and "does not let nobody in" in message
    assert "`xhost si:localuser:nobody`" in fix and "Never `xhost +`" in fix
    assert not x.reachable_as(USER)

    x.xhost("+si:localuser:nobody")  # the fix the finding gives
    assert xaccess.verdict(x.xhost(), USER, x.display)[0] == "pass"
    assert x.reachable_as(USER)
    assert xaccess.verdict(x.xhost(), "libvirt-qemu", x.display)[0] == "warn"

    x.xhost("-si:localuser:nobody")
    x.xhost("+")  # what the guide suggests if the above fails: works, and opens it to all
    severity, message, fix = xaccess.verdict(x.xhost(), USER, x.display)
    assert severity == "warn" and "access control off" in message and "xhost -" in fix
    assert x.reachable_as(USER)

    x.xhost("-")
    x.xhost("+local:")
    severity, message, _ = xaccess.verdict(x.xhost(), USER, x.display)
    assert severity == "warn" and "every local user" in message
    assert x.reachable_as(USER)


def test_recheck_only_in_the_session_of_that_display(x: Xvfb,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = ("warn", "win10 opens ...", "fix")
    check_id = f"x-access:{USER}@{x.display}"
    monkeypatch.delenv("DISPLAY", raising=False)
    assert xaccess.recheck(check_id, *daemon) == daemon
    monkeypatch.setenv("DISPLAY", ":4242")
    assert xaccess.recheck(check_id, *daemon) == daemon
    monkeypatch.setenv("DISPLAY", x.display + ".0")
    monkeypatch.setenv("XAUTHORITY", str(x.auth))
    assert xaccess.recheck(check_id, *daemon)[0] == "warn"
    x.xhost("+si:localuser:nobody")
    assert xaccess.recheck(check_id, *daemon)[0] == "pass"
    monkeypatch.setenv("XAUTHORITY", str(x.dir / "none"))  # a session without the cookie
    severity, message, _ = xaccess.recheck(check_id, *daemon)
    assert severity == "warn" and "xhost could not list" in message

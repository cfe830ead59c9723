"""The suspend handler's sender check on its own: forged signals change nothing, and each
(sender, member) is logged once, in memory that stays bounded under a flood of senders
(every new connection has a new unique name). The handler is fed the messages dbus-fast
would hand it; no bus, logind or host is needed since nothing forged may reach them."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from dbus_fast import Message, MessageType

from gvtd.suspend import FORGED_MEMORY, Suspend

LOGIND_OWNER = ":1.3"


def sleep(sender: str) -> Message:
    return Message(message_type=MessageType.SIGNAL, sender=sender,
                   path="/org/freedesktop/login1", interface="org.freedesktop.login1.Manager",
                   member="PrepareForSleep", signature="b", body=[True])


def logind_left(sender: str) -> Message:
    return Message(message_type=MessageType.SIGNAL, sender=sender, path="/org/freedesktop/DBus",
                   interface="org.freedesktop.DBus", member="NameOwnerChanged",
                   signature="sss", body=["org.freedesktop.login1", LOGIND_OWNER, ""])


def handler(changed: Callable[[], None] = lambda: None) -> Suspend:
    """A handler that believes logind is LOGIND_OWNER (as after GetNameOwner)."""
    s = Suspend(None, None, "teardown-idle", changed)  # type: ignore[arg-type]
    s._logind_owner = LOGIND_OWNER
    return s


def ignored(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Ignored")]


def test_forged_signals_change_nothing_and_are_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gvtd.suspend")
    s = handler()
    for _ in range(3):
        s._on_message(sleep(":1.9"))
        s._on_message(logind_left(":1.9"))
    assert ignored(caplog) == [
        f"Ignored a PrepareForSleep signal from :1.9: only org.freedesktop.login1 "
        f"({LOGIND_OWNER}) sends it",
        "Ignored a NameOwnerChanged signal from :1.9: only org.freedesktop.DBus "
        "(org.freedesktop.DBus) sends it"]
    assert s._logind_owner == LOGIND_OWNER and s.problems() == [] and s.state == "off"


def test_the_memory_of_forgers_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gvtd.suspend")
    s = handler()
    senders = [f":1.{100 + n}" for n in range(3 * FORGED_MEMORY)]
    for sender in senders:
        s._on_message(sleep(sender))
    assert len(ignored(caplog)) == len(senders)
    assert len(s._forged) == FORGED_MEMORY
    caplog.clear()
    s._on_message(sleep(senders[-1]))  # remembered: not logged again
    assert ignored(caplog) == []
    s._on_message(sleep(senders[0]))  # forgotten long ago: logged again
    assert len(ignored(caplog)) == 1 and len(s._forged) == FORGED_MEMORY
    assert s.state == "off" and s.problems() == []


@pytest.mark.parametrize("answer", ["error", "raise"])
def test_an_unreadable_inhibit_delay_is_said_and_the_default_used(
        caplog: pytest.LogCaptureFixture, answer: str) -> None:
    """logind refusing the property, or the bus failing under the call: the handler keeps
    logind's default delay and says why in the log, instead of swallowing it."""
    import asyncio

    from gvtd.suspend import DEFAULT_DELAY_MAX

    s = handler()
    s.delay_max = 1.0

    async def call(*_args: object) -> Message:  # the bus below the handler
        if answer == "raise":
            raise EOFError("the bus went away")
        return Message(message_type=MessageType.ERROR, error_name="org.freedesktop.DBus."
                       "Error.UnknownProperty", reply_serial=1, signature="s",
                       body=["no such property"])

    s._call = call  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="gvtd.suspend")
    asyncio.run(s._read_delay_max())
    assert s.delay_max == DEFAULT_DELAY_MAX
    (line,) = [r.getMessage() for r in caplog.records]
    assert "InhibitDelayMaxUSec" in line
    assert ("the bus went away" if answer == "raise" else "no such property") in line


def test_a_failed_sleep_handler_is_in_problems_and_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    """logind's PrepareForSleep(true) handled in the background fails (here the bus
    objects' update raises when the state changes): logged and shown in Problems, not lost
    with its task; the resume that follows succeeds and clears it."""
    import asyncio

    failures = [RuntimeError("the host went away")]
    problems: list[list[tuple[str, str, str, str]]] = []
    seen: asyncio.Event

    def changed() -> None:  # what gvtd's bus objects do on each change
        problems.append(s.problems())
        seen.set()
        if failures:
            raise failures.pop()

    s = handler(changed)

    async def signal(sleeping: bool, until: object) -> None:
        nonlocal seen
        seen = asyncio.Event()
        s._on_message(Message(message_type=MessageType.SIGNAL, sender=LOGIND_OWNER,
                              path="/org/freedesktop/login1",
                              interface="org.freedesktop.login1.Manager",
                              member="PrepareForSleep", signature="b", body=[sleeping]))
        while not until():  # type: ignore[operator]
            seen.clear()
            await seen.wait()

    def handling() -> list[tuple[str, str, str, str]]:
        return [p for p in s.problems() if p[0] == "suspend:handling"]

    async def run() -> None:
        await signal(True, lambda: handling())
        (problem,) = handling()
        assert "RuntimeError: the host went away" in problem[2], problem
        assert "gvt-client create NAME" in problem[3]
        await signal(False, lambda: not handling())
        assert s.state == "on"

    caplog.set_level(logging.ERROR)
    asyncio.run(run())
    assert any("the host went away" in r.getMessage() for r in caplog.records)

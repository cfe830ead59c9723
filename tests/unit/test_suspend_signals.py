"""The suspend handler's sender check on its own: forged signals change nothing, and each
(sender, member) is logged once, in memory that stays bounded under a flood of senders
(every new connection has a new unique name). The handler is fed the messages dbus-fast
would hand it; no bus, logind or host is needed since nothing forged may reach them."""

from __future__ import annotations

import logging

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


def handler() -> Suspend:
    """A handler that believes logind is LOGIND_OWNER (as after GetNameOwner)."""
    s = Suspend(None, None, "teardown-idle", lambda: None)  # type: ignore[arg-type]
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
    assert s._logind_owner == LOGIND_OWNER and not s._tasks and s.state == "off"


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
    assert not s._tasks


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
    """A task the handler starts for PrepareForSleep that fails: logged and shown in
    Problems, not lost with the task; the next that succeeds clears it."""
    import asyncio

    s = handler()
    changed: list[None] = []
    s.changed = lambda: changed.append(None)  # type: ignore[method-assign]

    async def fails() -> None:
        raise RuntimeError("the host went away")

    async def succeeds() -> None:
        pass

    async def run(coro: object) -> None:
        s._spawn(coro)
        (task,) = s._tasks
        handled = asyncio.get_running_loop().create_future()
        task.add_done_callback(lambda _: handled.set_result(None))  # runs after s._done
        await handled

    caplog.set_level(logging.ERROR, logger="gvtd.suspend")
    asyncio.run(run(fails()))
    (problem,) = [p for p in s._problems.values() if p[0] == "suspend:handling"]
    assert "the host went away" in problem[2] and changed
    assert any("the host went away" in r.getMessage() for r in caplog.records)
    asyncio.run(run(succeeds()))
    assert "suspend:handling" not in s._problems and not s._tasks

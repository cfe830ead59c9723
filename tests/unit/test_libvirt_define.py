"""Libvirt.define against the libvirt test:/// driver: an edit (attach, detach, tune,
revert) is defined only over the very XML it was made from."""

import asyncio

import pytest

from gvtd.errors import Busy, NotFound
from gvtd.virt.connection import Libvirt

MINE = "<description>mine</description>"
LIFECYCLE = ("<domain type='test'><name>lifecycle</name><memory>8192</memory>"
             "<os><type>hvm</type></os></domain>")


def test_define_refuses_over_an_xml_changed_since_it_was_read() -> None:
    """A define made meanwhile by another libvirt client (here over the same test:///
    connection, whose state is private to it) is Busy and kept; an XML still as read is
    replaced; a domain undefined meanwhile is NotFound, not defined again."""

    async def go() -> None:
        lv = Libvirt("test:///default", on_change=lambda _names: None)
        await lv.start()
        try:
            assert lv.conn is not None
            read = await lv.read_xml("test")
            edit = read.replace("<memory", "<title>gvtd's</title><memory", 1)
            theirs = read.replace("</name>", "</name>" + MINE, 1)
            lv.conn.defineXML(theirs)  # what a `virsh edit` does, between read and define
            mine = await lv.read_xml("test")
            with pytest.raises(Busy, match="changed while gvtd was editing it"):
                await lv.define("test", edit, read)
            assert await lv.read_xml("test") == mine
            await lv.define("test", mine.replace("<memory", "<title>t</title><memory", 1),
                            mine)
            assert "<title>t</title>" in await lv.read_xml("test")
            now = await lv.read_xml("test")
            lv.conn.lookupByName("test").destroy()
            lv.conn.lookupByName("test").undefine()
            with pytest.raises(NotFound):
                await lv.define("test", edit, now)
            assert "test" not in lv.conn.listDefinedDomains()
        finally:
            lv.close()

    asyncio.run(go())


def test_a_failing_lifecycle_refresh_is_in_problems_and_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    """The refresh a libvirt event starts in the background fails (here its listener
    raises): the failure is logged and in Libvirt.background's problems (which Manager.Problems shows),
    and the listener is told, instead of vanishing with the task."""

    async def go() -> None:
        told, cleared = asyncio.Event(), asyncio.Event()
        broken = [True]

        def on_change(names: set[str]) -> None:
            if names == {"lifecycle"} and broken[0]:
                raise RuntimeError("listener broke")
            (told if lv.background.problems() else cleared).set()

        lv = Libvirt("test:///default", on_change=on_change)
        await lv.start()
        try:
            assert lv.conn is not None
            dom = await asyncio.to_thread(lv.conn.createXML, LIFECYCLE)
            # libvirt's lifecycle callback, called as libvirt calls it (libvirtaio stays on
            # the loop of the first test that registered it, so events cannot reach this one)
            lv._on_lifecycle(lv.conn, dom, 0, 0, None)
            await asyncio.wait_for(told.wait(), 10)
            (problem,) = lv.background.problems()
            assert problem[1] == "error" and "listener broke" in problem[2]
            assert "read a domain after its libvirt event" in problem[2]
            assert not lv.background.tasks
            broken[0] = False  # the next refresh succeeds: the problem is over
            cleared.clear()
            lv._on_lifecycle(lv.conn, dom, 0, 0, None)
            await asyncio.wait_for(cleared.wait(), 10)
            assert lv.background.problems() == []
        finally:
            lv.close()

    caplog.set_level("ERROR", logger="gvtd.background")
    asyncio.run(go())
    assert any("listener broke" in r.getMessage() for r in caplog.records)

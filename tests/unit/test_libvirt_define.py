"""Libvirt.define against the libvirt test:/// driver: an edit (attach, detach, tune,
revert) is defined only over the very XML it was made from."""

import asyncio

import pytest

from gvtd.errors import Busy, NotFound
from gvtd.virt.connection import Libvirt

MINE = "<description>mine</description>"


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

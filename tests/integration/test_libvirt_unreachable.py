"""libvirtd stopped for hours must not fill the journal: gvtd says once that it cannot
connect, retries quietly, and says so again only when the reason changes."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gvtd.virt.connection import Libvirt


class Records(logging.Handler):
    """The connection's log records, with an event per record for the test to wait on."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.arrived = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.arrived.set()

    async def wait(self, count: int, level: int) -> None:
        while sum(r.levelno == level for r in self.records) < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 30)


@pytest.mark.timeout(60)
def test_retries_that_fail_alike_are_logged_once(tmp_path: Path) -> None:
    uri = f"qemu:///system?socket={tmp_path}/no-libvirtd-here"

    async def run() -> Records:
        records = Records()
        logger = logging.getLogger("gvtd.virt.connection")
        logger.addHandler(records)
        logger.setLevel(logging.DEBUG)
        lv = Libvirt(uri, on_change=lambda _names: None)
        try:
            await lv.start()
            await records.wait(2, logging.DEBUG)  # the second and third attempts
        finally:
            lv.close()
            logger.removeHandler(records)
        return records

    records = asyncio.run(run())
    warnings = [r.getMessage() for r in records.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "no-libvirtd-here" in warnings[0] and "retrying" in warnings[0]
    assert not any(r.levelno > logging.WARNING for r in records.records)

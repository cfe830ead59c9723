"""libvirtd stopped for hours must not fill the journal: gvtd says once that it cannot
connect, retries quietly, and says so again only when the reason changes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Run in a process of its own: libvirt's event loop implementation, once registered, is
# bound to that process's asyncio loop for good.
SCRIPT = """
import asyncio, json, logging, sys
from gvtd.virt.connection import Libvirt

class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []
        self.arrived = asyncio.Event()

    def emit(self, record):
        self.records.append((record.levelno, record.getMessage()))
        self.arrived.set()

async def main():
    records = Records()
    logger = logging.getLogger("gvtd.virt.connection")
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    lv = Libvirt(sys.argv[1], on_change=lambda _names: None)
    await lv.start()
    # the second and third attempts, each a record: wait for them, not for time
    while sum(level == logging.DEBUG for level, _ in records.records) < 2:
        records.arrived.clear()
        await asyncio.wait_for(records.arrived.wait(), 30)
    lv.close()
    print(json.dumps(records.records))

asyncio.run(main())
"""


@pytest.mark.timeout(60)
def test_retries_that_fail_alike_are_logged_once(tmp_path: Path) -> None:
    uri = f"qemu:///system?socket={tmp_path}/no-libvirtd-here"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, uri], capture_output=True,
                          text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(proc.stdout)
    warnings = [text for level, text in records if level == 30]
    assert len(warnings) == 1, records
    assert "no-libvirtd-here" in warnings[0] and "retrying" in warnings[0]
    assert all(level <= 30 for level, _ in records)

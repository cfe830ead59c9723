"""The ownership record: each mdev's origin, what gvtd may remove, and an older gvtd's file.
Its writes are coroutines (they run in gvtd's disk thread), hence asyncio.run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gvtd.state import STATE_FILE, Ownership

MINE = "11111111-2222-4333-8444-555555555555"
THEIRS = "22222222-3333-4444-8555-666666666666"
TAKEN = "33333333-4444-4555-8666-777777777777"


def test_origins_decide_what_gvtd_may_remove(tmp_path: Path) -> None:
    o = Ownership(tmp_path)
    asyncio.run(o.add(MINE, "mine"))
    # gvtd's own found again: stays its own
    asyncio.run(o.add_all({THEIRS: "theirs", MINE: "mine"}, "adopted"))
    asyncio.run(o.add_all({TAKEN: "taken"}, "taken-over"))
    assert o.origins() == {MINE: "created", THEIRS: "adopted", TAKEN: "taken-over"}
    assert [o.removable(u) for u in (MINE, THEIRS, TAKEN)] == [True, False, True]
    assert THEIRS in o and o.name(THEIRS) == "theirs"
    data = json.loads((tmp_path / STATE_FILE).read_text())
    # an older gvtd reads "created" alone: it never sees the adopted one as its own
    assert data == {"version": 2, "created": {MINE: "mine"}, "adopted": {THEIRS: "theirs"},
                    "taken_over": {TAKEN: "taken"}}
    again = Ownership(tmp_path)
    again.load()
    assert again.origins() == o.origins() and again.items() == o.items()
    asyncio.run(o.add(THEIRS, "theirs"))  # gvtd created that UUID itself later (after a reboot)
    assert o.origin(THEIRS) == "created"
    asyncio.run(o.discard_all([MINE, THEIRS]))
    assert o.origins() == {TAKEN: "taken-over"}


def test_an_older_gvtds_file_still_loads(tmp_path: Path) -> None:
    """Version 1 has "created" alone (with adopted mdevs in it, it cannot tell): they load
    as created, and the next write is version 2."""
    (tmp_path / STATE_FILE).write_text(json.dumps(
        {"version": 1, "created": {MINE: "mine", THEIRS: "theirs", "not-a-uuid": "x"}}))
    o = Ownership(tmp_path)
    o.load()
    assert o.origins() == {MINE: "created", THEIRS: "created"}
    assert o.items() == [(MINE, "mine"), (THEIRS, "theirs")]
    asyncio.run(o.add_all({TAKEN: "taken"}, "adopted"))
    assert json.loads((tmp_path / STATE_FILE).read_text()) == {
        "version": 2, "created": {MINE: "mine", THEIRS: "theirs"},
        "adopted": {TAKEN: "taken"}, "taken_over": {}}

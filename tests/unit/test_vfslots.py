"""VF slots: a stable index per SR-IOV definition on its PF, recorded before it is used
(gvtd.vfslots)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gvtd.vfslots import SLOTS_FILE, VfSlots

A = "11111111-2222-4333-8444-555555555555"
B = "22222222-3333-4444-8555-666666666666"
C = "33333333-4444-4555-8666-777777777777"
D = "44444444-5555-4666-8777-888888888888"
GPU, NVME = "0000:00:02.0", "0000:01:00.0"


def test_lowest_free_index_kept_across_loads(tmp_path: Path) -> None:
    s = VfSlots(tmp_path)
    s.load()
    defined = {A, B, C}
    assert [s.assign(u, GPU, defined, 7) for u in (A, B, C)] == [0, 1, 2]
    assert s.assign(B, GPU, defined, 7) == 1  # the one it has
    assert s.wanted(GPU) == 3 and s.wanted(NVME) == 0
    assert s.assign(B, NVME, defined, 2) == 0  # moved: its VF on the GPU is free
    assert s.wanted(GPU) == 3 and s.on(GPU) == {A: 0, C: 2}  # C keeps its VF: no renumbering
    again = VfSlots(tmp_path)
    again.load()
    assert (again.slot(A), again.slot(B), again.slot(C)) == ((GPU, 0), (NVME, 0), (GPU, 2))
    assert again.owner(GPU, 2) == C and again.owner(GPU, 1) is None
    assert again.assign(D, GPU, defined | {D}, 7) == 1
    assert again.assign(B, GPU, {B}, 7) == 0  # A, C and D are undefined: their VFs are free
    assert again.on(GPU) == {B: 0} and again.on(NVME) == {}
    data = json.loads((tmp_path / SLOTS_FILE).read_text())
    assert data == {"version": 1, "slots": {B: {"pf": GPU, "index": 0}}}
    assert (tmp_path / SLOTS_FILE).stat().st_mode & 0o777 == 0o600


def test_no_free_index_below_the_limit_writes_nothing(tmp_path: Path) -> None:
    s = VfSlots(tmp_path)
    assert [s.assign(u, NVME, {A, B, C}, 2) for u in (A, B, C)] == [0, 1, None]
    assert s.slot(C) is None and s.wanted(NVME) == 2
    assert s.assign(A, NVME, {A, B, C}, 0) is None  # the PF allows none now


def test_a_bad_record_is_ignored_entry_by_entry_or_whole(tmp_path: Path) -> None:
    (tmp_path / SLOTS_FILE).write_text(json.dumps({"version": 1, "slots": {
        A: {"pf": GPU, "index": 0}, B: {"pf": GPU, "index": 0},  # taken twice: first wins
        "not-a-uuid": {"pf": GPU, "index": 1}, C: {"pf": "../x", "index": 2}}}))
    s = VfSlots(tmp_path)
    s.load()
    assert s.on(GPU) == {A: 0} and s.slot(C) is None
    (tmp_path / SLOTS_FILE).write_text("{")
    s.load()
    assert s.on(GPU) == {}


def test_a_failed_write_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    s = VfSlots(tmp_path / "state")
    with pytest.raises(OSError):
        s.assign(A, GPU, {A}, 7)
    assert s.slot(A) is None

"""Which VF of which PF each SR-IOV definition has (STATE_DIRECTORY/vfslots.json).

A VF's address follows from its index on the PF, and a domain's XML names that address: so
a definition keeps its index across restarts, reboots and other definitions coming and
going. The lowest free index on the PF is assigned once, and recorded durably *before*
any write to the kernel (as gvtd.state records an mdev before its create), so a crash never
leaves a VF gvtd bound that no record gives to its definition.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from pathlib import Path

from gvtd.config import PCI_ADDRESS_RE, UUID_RE, atomic_write

log = logging.getLogger(__name__)

SLOTS_FILE = "vfslots.json"
VERSION = 1
MAX_INDEX = 0xffff  # no PF has more VFs than routing ids


class VfSlots:
    """VF index per definition UUID, on the PF it was given on."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / SLOTS_FILE
        self._slots: dict[str, tuple[str, int]] = {}

    def load(self) -> None:
        """Read the record (after Ownership.load, which clears the state directory of
        interrupted writes). A file that cannot be read loses only the indexes (each is
        given again, lowest free first), never a VF: so start empty, and say so."""
        try:
            data = json.loads(self.path.read_text())
            slots: dict[str, tuple[str, int]] = {}
            for uuid, slot in data.get("slots", {}).items():
                pf, index = slot.get("pf"), slot.get("index")
                if UUID_RE.fullmatch(uuid) and isinstance(pf, str) \
                        and PCI_ADDRESS_RE.fullmatch(pf) and isinstance(index, int) \
                        and 0 <= index <= MAX_INDEX and (pf, index) not in slots.values():
                    slots[uuid] = (pf, index)
            self._slots = slots
        except FileNotFoundError:
            self._slots = {}
        except (OSError, ValueError, AttributeError) as e:
            log.warning("Ignoring unreadable VF slot file %s: %s", self.path, e)
            self._slots = {}

    def slot(self, uuid: str) -> tuple[str, int] | None:
        """(PF, index) of a definition's VF, or None before one is assigned."""
        return self._slots.get(uuid)

    def on(self, pf: str) -> dict[str, int]:
        """The indexes given on one PF, by definition UUID."""
        return {u: i for u, (p, i) in self._slots.items() if p == pf}

    def owner(self, pf: str, index: int) -> str | None:
        """The definition UUID that VF `index` of `pf` is given to."""
        return next((u for u, s in self._slots.items() if s == (pf, index)), None)

    def wanted(self, pf: str) -> int:
        """How many VFs the PF needs for the indexes given on it: the highest plus one."""
        return max(self.on(pf).values(), default=-1) + 1

    def assign(self, uuid: str, pf: str, keep: Collection[str], limit: int) -> int | None:
        """The definition's index on `pf`: the one it has, else the lowest free one below
        `limit` (None when there is none: nothing is written), recorded durably before it
        returns. The slots of UUIDs not in `keep` (definitions gone) and the definition's
        index on another PF are given up in the same write. Blocking (an fsync): call it in
        the worker thread that goes on to write the kernel. Unchanged on OSError."""
        held = self._slots.get(uuid)
        if held is not None and held[0] == pf and held[1] < limit:
            return held[1]
        slots = {u: s for u, s in self._slots.items() if u in keep and u != uuid}
        used = {i for p, i in slots.values() if p == pf}
        index = next(i for i in range(limit + 1) if i not in used)
        if index >= limit:
            return None
        slots[uuid] = (pf, index)
        self._write(slots)
        self._slots = slots  # durable first: memory never claims what the disk does not
        return index

    def _write(self, slots: dict[str, tuple[str, int]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {u: {"pf": p, "index": i} for u, (p, i) in sorted(slots.items())}
        atomic_write(self.path, json.dumps({"version": VERSION, "slots": data}, indent=1,
                                           sort_keys=True) + "\n", mode=0o600)

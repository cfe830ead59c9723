"""What gvtd must remember across restarts: which mdevs it created (STATE_DIRECTORY).

A UUID is recorded *before* its create is written, so a crash between the two never leaves
an mdev gvtd made but does not know is its own; a stale record of an mdev that was never
made is harmless (its UUID belongs to a definition anyway).
"""

from __future__ import annotations

import json
import os
import logging
from pathlib import Path

from gvtd.config import UUID_RE, atomic_write, on_disk, remove_temporaries

log = logging.getLogger(__name__)

STATE_FILE = "created.json"


class Ownership:
    """The set of mdev UUIDs this daemon created, with the name each was created for."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        self._created: dict[str, str] = {}

    def load(self) -> None:
        try:
            remove_temporaries(self.path.parent, os.listdir(self.path.parent))
        except OSError:
            pass  # no state directory yet: nothing to clean
        try:
            data = json.loads(self.path.read_text())
            created = data.get("created", {})
            self._created = {u: str(n) for u, n in created.items() if UUID_RE.fullmatch(u)}
        except FileNotFoundError:
            self._created = {}
        except (OSError, ValueError, AttributeError) as e:
            # Without the record gvtd only loses the right to remove what it made; it never
            # removes an mdev it does not know, so starting empty is the safe side.
            log.warning("Ignoring unreadable state file %s: %s", self.path, e)
            self._created = {}

    def __contains__(self, uuid: str) -> bool:
        return uuid in self._created

    def name(self, uuid: str) -> str | None:
        return self._created.get(uuid)

    def items(self) -> list[tuple[str, str]]:
        return sorted(self._created.items())

    async def add(self, uuid: str, name: str) -> None:
        await self.add_all({uuid: name})

    async def add_all(self, created: dict[str, str]) -> None:
        """Record a whole batch of creates in one durable write (an fsync per vGPU made a
        start with hundreds of them spend seconds on it). Unchanged on OSError."""
        new = {u: n for u, n in created.items() if self._created.get(u) != n}
        if new:
            await self._save({**self._created, **new})

    async def discard(self, uuid: str) -> None:
        await self.discard_all([uuid])

    async def discard_all(self, uuids: list[str]) -> None:
        if any(u in self._created for u in uuids):
            gone = set(uuids)
            await self._save({u: n for u, n in self._created.items() if u not in gone})

    async def _save(self, created: dict[str, str]) -> None:
        """Write `created` in the disk thread (its fsyncs off the loop), then take it as
        the record: memory never claims what the disk does not. Callers hold the host's
        lock, so no two saves overlap."""
        await on_disk(self._write, created)
        self._created = created

    def _write(self, created: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps({"version": 1, "created": created},
                                           indent=1, sort_keys=True) + "\n", mode=0o600)

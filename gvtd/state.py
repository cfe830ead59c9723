"""What gvtd must remember across restarts: which mdevs are its own (STATE_DIRECTORY).

Each recorded mdev has an origin: `created` (gvtd wrote its create), `taken-over` (it
existed, and a definition took it over explicitly: Define's take_over) or `adopted` (it
existed, and a definition names it). gvtd removes only the first two: an adopted mdev is
used and shown, never removed, as one nobody defined.

A UUID is recorded *before* its create is written, so a crash between the two never leaves
an mdev gvtd made but does not know is its own; a stale record of an mdev that was never
made is harmless (its UUID belongs to a definition anyway).
"""

from __future__ import annotations

import json
import os
import logging
from pathlib import Path
from typing import Literal

from gvtd.config import UUID_RE, atomic_write, on_disk, remove_temporaries

log = logging.getLogger(__name__)

STATE_FILE = "created.json"
VERSION = 2
Origin = Literal["created", "taken-over", "adopted"]
REMOVABLE: tuple[Origin, ...] = ("created", "taken-over")


class Ownership:
    """The mdev UUIDs this daemon knows as its own, with the name each was recorded for
    and its origin."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        self._names: dict[str, str] = {}
        self._origins: dict[str, Origin] = {}

    def load(self) -> None:
        try:
            remove_temporaries(self.path.parent, os.listdir(self.path.parent))
        except OSError:
            pass  # no state directory yet: nothing to clean
        try:
            data = json.loads(self.path.read_text())
            names: dict[str, str] = {}
            origins: dict[str, Origin] = {}
            # Version 1 (an older gvtd) has "created" alone, with adopted mdevs in it: it
            # cannot tell them apart, so they keep what it claimed until they are gone.
            # Version 2 keeps "created" readable by that older gvtd, holding only what it
            # may remove, and the rest beside it.
            for key, origin in (("adopted", "adopted"), ("taken_over", "taken-over"),
                                ("created", "created")):
                for u, n in data.get(key, {}).items():
                    if UUID_RE.fullmatch(u) and u not in origins:
                        names[u], origins[u] = str(n), origin  # type: ignore[assignment]
            self._names, self._origins = names, origins
        except FileNotFoundError:
            self._names, self._origins = {}, {}
        except (OSError, ValueError, AttributeError) as e:
            # Without the record gvtd only loses the right to remove what it made; it never
            # removes an mdev it does not know, so starting empty is the safe side.
            log.warning("Ignoring unreadable state file %s: %s", self.path, e)
            self._names, self._origins = {}, {}

    def __contains__(self, uuid: str) -> bool:
        return uuid in self._names

    def removable(self, uuid: str) -> bool:
        """gvtd created it, or a definition took it over: gvtd may remove it."""
        return self._origins.get(uuid) in REMOVABLE

    def origin(self, uuid: str) -> Origin | None:
        return self._origins.get(uuid)

    def name(self, uuid: str) -> str | None:
        return self._names.get(uuid)

    def items(self) -> list[tuple[str, str]]:
        return sorted(self._names.items())

    def origins(self) -> dict[str, Origin]:
        return dict(self._origins)

    async def add(self, uuid: str, name: str) -> None:
        await self.add_all({uuid: name})

    async def add_all(self, created: dict[str, str], origin: Origin = "created") -> None:
        """Record a whole batch in one durable write (an fsync per vGPU made a start with
        hundreds of them spend seconds on it). `created` and `taken-over` replace what was
        recorded; `adopted` records only what was not: gvtd's own mdev found again after a
        restart stays its own. Unchanged on OSError."""
        new = {u: n for u, n in created.items()
               if (self._names.get(u), self._origins.get(u)) != (n, origin)
               and (origin != "adopted" or u not in self._names)}
        if new:
            await self._save({**self._names, **new},
                             {**self._origins, **{u: origin for u in new}})

    async def discard(self, uuid: str) -> None:
        await self.discard_all([uuid])

    async def discard_all(self, uuids: list[str]) -> None:
        if any(u in self._names for u in uuids):
            gone = set(uuids)
            await self._save({u: n for u, n in self._names.items() if u not in gone},
                             {u: o for u, o in self._origins.items() if u not in gone})

    async def _save(self, names: dict[str, str], origins: dict[str, Origin]) -> None:
        """Write the record in the disk thread (its fsyncs off the loop), then take it as
        the record: memory never claims what the disk does not. Callers hold the host's
        lock, so no two saves overlap."""
        await on_disk(self._write, names, origins)
        self._names, self._origins = names, origins

    def _write(self, names: dict[str, str], origins: dict[str, Origin]) -> None:
        by_key: dict[str, dict[str, str]] = {"created": {}, "taken_over": {}, "adopted": {}}
        for u, n in names.items():
            by_key[origins[u].replace("-", "_")][u] = n
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps({"version": VERSION, **by_key},
                                           indent=1, sort_keys=True) + "\n", mode=0o600)

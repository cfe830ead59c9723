"""mdevctl's persistent definitions, read and written for `gvt-client import-mdevctl` and
`gvt-client export --format mdevctl`.

mdevctl keeps one JSON file per mdev at DIR/PARENT/UUID (`/etc/mdevctl.d` by default):
{"mdev_type": TYPE, "start": "auto"|"manual", "attrs": [{NAME: VALUE}, ...]}. The
coexistence rule both commands follow is that one tool creates a UUID at boot: gvtd never
starts a UUID that mdevctl auto-starts (docs/configuration.md, "Coexisting with mdevctl").

Pure file handling and conversion: the client defines what it reads through the daemon's
Define, so polkit and the daemon's validation apply to every imported definition.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("/etc/mdevctl.d")
SCRIPTS = "scripts.d"  # mdevctl's callouts and notifiers, not a parent
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}")
MAX_SIZE = 64 * 1024


class MdevctlError(Exception):
    """mdevctl's files cannot be used as they are; the text says which and why."""


@dataclass(frozen=True)
class Entry:
    """One mdevctl definition, in the terms both tools share."""

    uuid: str
    parent: str
    type_id: str
    start: str  # mdevctl's: auto or manual
    attrs: tuple[tuple[str, str], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """The file's content, with mdevctl's key order."""
        return {"mdev_type": self.type_id, "start": self.start,
                "attrs": [{k: v} for k, v in self.attrs]}


def _entry(path: Path, parent: str, uuid: str) -> Entry:
    where = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SIZE + 1)
        if len(raw) > MAX_SIZE:
            raise MdevctlError(f"{where}: larger than {MAX_SIZE // 1024} KiB, not an mdevctl "
                               "definition.")
        data = json.loads(raw.decode("utf-8"))
    except OSError as e:
        raise MdevctlError(f"{where}: cannot be read: {e.strerror}.") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise MdevctlError(f"{where}: not JSON ({e}); `mdevctl list --defined` shows what "
                           "mdevctl makes of it.") from e
    if not isinstance(data, dict):
        raise MdevctlError(f"{where}: not an mdevctl definition (a JSON object).")
    type_id, start, attrs = data.get("mdev_type"), data.get("start", "manual"), \
        data.get("attrs", [])
    if not isinstance(type_id, str) or not type_id:
        raise MdevctlError(f"{where}: no \"mdev_type\".")
    if start not in ("auto", "manual"):
        raise MdevctlError(f"{where}: \"start\" is {start!r}; mdevctl writes auto or manual.")
    unknown = sorted(set(data) - {"mdev_type", "start", "attrs"})
    if unknown:
        raise MdevctlError(f"{where}: keys gvtd has no place for: {', '.join(unknown)}; "
                           "nothing was imported.")
    if not isinstance(attrs, list) or not all(
            isinstance(a, dict) and len(a) == 1 and all(isinstance(v, str) for v in a.values())
            for a in attrs):
        raise MdevctlError(f"{where}: \"attrs\" must be a list of {{\"name\": \"value\"}} "
                           "objects, as `mdevctl modify --addattr` writes.")
    pairs = tuple(next(iter(a.items())) for a in attrs)
    return Entry(uuid.lower(), parent, type_id, start, pairs)


def read_dir(top: Path) -> list[Entry]:
    """Every definition under top, sorted by parent and UUID; any unusable file is an
    MdevctlError, so an import takes all of them or none."""
    try:
        parents = sorted(os.listdir(top))
    except FileNotFoundError:
        raise MdevctlError(f"{top} does not exist: mdevctl keeps its definitions there "
                           "(`mdevctl define`); name another directory with --dir.") from None
    except OSError as e:
        raise MdevctlError(f"{top}: cannot be read: {e.strerror}.") from e
    out = []
    for parent in parents:
        pdir = top / parent
        if parent == SCRIPTS or parent.startswith(".") or not pdir.is_dir():
            continue
        for name in sorted(os.listdir(pdir)):
            if name.startswith("."):
                continue
            if not UUID_RE.fullmatch(name):
                raise MdevctlError(f"{pdir / name}: not a UUID; mdevctl names each definition "
                                   "file after its mdev's UUID.")
            out.append(_entry(pdir / name, parent, name))
    seen: dict[str, str] = {}
    for e in out:
        if e.uuid in seen:
            raise MdevctlError(f"UUID {e.uuid} is defined under both {seen[e.uuid]} and "
                               f"{e.parent} in {top}; remove one with mdevctl undefine.")
        seen[e.uuid] = e.parent
    return out


def dumpjson(entries: list[Entry]) -> str:
    """What `mdevctl list --defined --dumpjson` prints for these definitions."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in sorted(entries, key=lambda e: (e.parent, e.uuid)):
        groups.setdefault(e.parent, []).append({e.uuid: e.to_json()})
    return json.dumps([{p: devs} for p, devs in groups.items()], indent=2)


def file_text(entry: Entry) -> str:
    """A definition file exactly as mdevctl writes it (two-space indent, no newline)."""
    return json.dumps(entry.to_json(), indent=2)


def write_dir(top: Path, entries: list[Entry]) -> list[Path]:
    """Write top/PARENT/UUID for each entry. A file already there with other content is an
    MdevctlError before anything is written; the same content is left as it is. A file that
    appears while exporting is never replaced either (see _create)."""
    plan = []
    for e in entries:
        path, text = top / e.parent / e.uuid, file_text(e)
        if _same(path, text, e.uuid, []) is None:
            plan.append((path, text, e.uuid))
    written: list[Path] = []
    for path, text, uuid in plan:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            created = _create(path, text)
        except OSError as err:
            raise MdevctlError(f"{path}: cannot be written: {err.strerror}"
                               + _so_far(written)) from err
        if created:
            written.append(path)
        else:  # someone wrote it since the check: theirs, unless it is this very definition
            _same(path, text, uuid, written)
    return written


def _so_far(written: list[Path]) -> str:
    return (f"; written before it: {', '.join(map(str, written))}." if written
            else "; nothing was written.")


def _same(path: Path, text: str, uuid: str, written: list[Path]) -> bool | None:
    """None when path does not exist, True when it holds text; MdevctlError otherwise."""
    try:
        old = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise MdevctlError(f"{path}: cannot be read ({err})" + _so_far(written)) from err
    if old.strip() != text:
        raise MdevctlError(f"{path} already exists with another definition"
                           + _so_far(written)[:-1] + ". Remove it (mdevctl undefine --uuid "
                           f"{uuid}) or export to another --dir.")
    return True


def _create(path: Path, text: str) -> bool:
    """Create path holding text, whole or not at all; False if the name is taken.

    A synced temporary file in the same directory is linked to the name: link(2) fails with
    EEXIST whatever is there, even a file written after the caller looked, so nothing is
    ever replaced. The temporary file goes on every path out; the directory is synced.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True

"""Configuration: /etc/gvtd/gvtd.toml and one vGPU definition per /etc/gvtd/vgpus.d/NAME.toml.

Pydantic models validate every value at the edge (a file or a D-Bus request), so the rest of
the daemon only ever sees well-formed definitions. Every write is atomic: a crash leaves
either the old file or the new one, never a partial one; and a definition gvtd writes never
replaces a file it did not load.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import stat
import tempfile
import tomllib
import uuid as uuidlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tomli_w

# pydantic lets any installed package hook into validation (its "pydantic" entry points);
# gvtd's configuration is validated by gvtd alone, and finding those hooks reads the
# metadata of every installed package: tens of ms of each start. Set before the models below
# are built, which is when pydantic looks.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from pydantic import (  # noqa: E402
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gvtd.errors import Busy, Failed, InvalidArgument

log = logging.getLogger(__name__)

DEFAULT_CONFIG_DIR = Path("/etc/gvtd")
MACHINE_ID_FILE = Path("/etc/machine-id")
# gvtd's application id in the sense of sd_id128_get_machine_app_specific(3): with the machine
# id it gives the namespace of the UUIDs of definitions written without one. Never change it:
# those UUIDs, and the domain XML that names them, would change with it.
APP_ID = uuidlib.UUID("8c648488-62d9-4d38-a714-e4d6f085555f")
SETTINGS_FILE = "gvtd.toml"
DEFINITIONS_DIR = "vgpus.d"
MAX_FILE_SIZE = 64 * 1024

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]{0,63}")
PARENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:_-]*(\.[A-Za-z0-9:_-]+)*")
RESOLUTION_RE = re.compile(r"([1-9][0-9]{2,4})x([1-9][0-9]{2,4})")
ATTR_NAME_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
DOMAIN_RE = re.compile(r"[^\x00-\x1f\x7f/]{1,100}")
PCI_ADDRESS_RE = re.compile(r"([0-9a-f]{4}):([0-9a-f]{2}):([01][0-9a-f])\.([0-7])")


def _matching(pattern: re.Pattern[str], what: str, hint: str):
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            shown = value if len(value) <= 60 else value[:57] + "..."
            raise ValueError(f"{shown!r} is not a valid {what}: {hint}")
        return value

    return AfterValidator(check)


def validate_name(name: str) -> str:
    """A definition name is also its file name, so it must be safe as one."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = name if isinstance(name, str) and len(name) <= 60 else f"{str(name)[:57]}..."
        raise InvalidArgument(
            f"{shown!r} is not a valid vGPU name: use 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (it becomes the file name vgpus.d/NAME.toml)."
        )
    return name


Uuid = Annotated[
    StrictStr,
    _matching(UUID_RE, "UUID", "use the lower-case 8-4-4-4-12 form that uuidgen prints"),
]
TypeId = Annotated[
    StrictStr,
    _matching(TYPE_RE, "mdev type id", "it names a directory of mdev_supported_types, "
              "such as i915-GVTg_V5_4 (see `gvt-client types`)"),
]
ParentName = Annotated[
    StrictStr,
    _matching(PARENT_RE, "parent", "use `auto` or a device name from `gvt-client parents`, "
              "such as 0000:00:02.0"),
    Field(max_length=64),
]
Resolution = Annotated[
    StrictStr,
    _matching(RESOLUTION_RE, "resolution", "write WIDTHxHEIGHT, such as 1920x1200"),
]
AttrName = Annotated[StrictStr, _matching(ATTR_NAME_RE, "attribute name", "use a sysfs file name")]
DomainName = Annotated[
    StrictStr,
    _matching(DOMAIN_RE, "libvirt domain name", "use the name `virsh list --all` shows"),
]
Start = Literal["auto", "on-demand", "manual"]
VF_TYPE = "vf"  # the one type an SR-IOV parent offers: a PCI virtual function (gvtd.sriov)
PciAddress = Annotated[
    StrictStr,
    _matching(PCI_ADDRESS_RE, "PCI address",
              "write it as `gvt-client parents` shows it, such as 0000:00:02.0"),
]


class Definition(BaseModel):
    """One persistent vGPU: the contents of vgpus.d/NAME.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The descriptions are the reference: gvtd.toml(5) is generated from them.
    # None only until _derived_when_missing has run: a loaded Definition always has one.
    uuid: Uuid = Field(None, validate_default=True,  # type: ignore[assignment]
                       description="the vGPU's UUID, lower case; `Define` writes a random "
                       "one when none is given; a file without one gets one derived from "
                       "the machine id and the definition's name, the same at every load")
    parent: ParentName = Field("auto", description="the mdev parent: `auto` (the only GPU "
                               "with the type) or a device name from `gvt-client parents`, "
                               "such as 0000:00:02.0")
    type: TypeId | None = Field(None, description="an mdev type id such as i915-GVTg_V5_4 "
                                "(`gvt-client types`), or `vf` for an SR-IOV virtual function "
                                "of the parent; give this or min_resolution")
    min_resolution: Resolution | None = Field(
        None, description="WIDTHxHEIGHT, such as 1920x1200: gvtd picks the smallest GVT-g "
        "type with at least this resolution, so that the most vGPUs fit; give this or type")
    start: Start = Field("auto", description="auto: the vGPU exists whenever its parent is "
                         "registered; on-demand: created when its domain starts and removed "
                         "after it stops; manual: only on `gvt-client create`")
    domain: DomainName | None = Field(None, description="the libvirt domain that uses it")
    attrs: list[tuple[AttrName, Annotated[StrictStr, Field(max_length=4096)]]] = Field(
        [], description="sysfs attributes of the mdev written in order after it is created, "
        'as [["name", "value"], ...], as mdevctl does')

    @field_validator("uuid", mode="before")
    @classmethod
    def _derived_when_missing(cls, value: Any, info: ValidationInfo) -> Any:
        """A hand-written file may leave the UUID out: the loader passes how to derive it
        (ConfigDir.load_definitions); nothing else may."""
        if value is not None:
            return value
        derive = (info.context or {}).get("derive_uuid")
        if derive is None:
            raise ValueError("Field required")
        return derive()

    @model_validator(mode="after")
    def _type_or_resolution(self) -> "Definition":
        if (self.type is None) == (self.min_resolution is None):
            raise ValueError("give exactly one of `type` and `min_resolution`")
        if self.type == VF_TYPE and self.attrs:
            raise ValueError("a VF (type `vf`) has no sysfs attributes to write: remove "
                             "`attrs`")
        return self

    def resolution(self) -> tuple[int, int] | None:
        if self.min_resolution is None:
            return None
        w, h = self.min_resolution.split("x")
        return int(w), int(h)

    def to_toml(self) -> str:
        data = self.model_dump(exclude_none=True, exclude_defaults=False)
        if not data["attrs"]:
            del data["attrs"]
        else:
            data["attrs"] = [list(pair) for pair in data["attrs"]]
        return (
            "# A gvtd vGPU definition. Edit it by hand if you like, then run `gvt-client reload`.\n"
            + tomli_w.dumps(data)
        )


class Settings(BaseModel):
    """Daemon settings from gvtd.toml; every field has a working default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The descriptions are the reference: gvtd.toml(5) and the shipped gvtd.toml are
    # generated from them.
    libvirt_uri: StrictStr = Field("qemu:///system", description="the libvirt connection "
                                   "for domains")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="how much gvtd logs; `gvtd --log-level` overrides it")
    suspend: Literal["teardown-idle", "block-while-running", "ignore"] = Field(
        "teardown-idle", description="what to do with vGPUs when the host suspends")
    restore_removed: StrictBool = Field(True, description="recreate an auto vGPU that "
                                        "someone removed behind gvtd's back")
    sysfs_root: StrictStr = Field("/sys", description="where the kernel's sysfs is "
                                  "(the simulation and tests point it elsewhere)")
    # Inputs of `gvt-client doctor`, redirectable so tests and the simulation use their own.
    procfs_root: StrictStr = Field("/proc", description="where doctor reads cmdline and "
                                   "sys/kernel/osrelease")
    kernel_log: StrictStr = Field("/dev/kmsg", description="the kernel log gvtd follows for "
                                  "GVT-g's messages about each vGPU, and doctor scans: "
                                  '/dev/kmsg (or a text file, for doctor only); "" turns both '
                                  "off")
    on_guest_fault: Literal["notify", "shutdown"] = Field(
        "notify", description="what gvtd does when the kernel log says a vGPU's guest is "
        "about to hang the host (\"guest page write error\"): show it (notify), or also ask "
        "the domain to shut down cleanly (shutdown)")
    mdevctl_dir: StrictStr = Field("/etc/mdevctl.d", description="mdevctl's definitions, "
                                   "which doctor checks for a UUID both tools start at boot")
    host_root: StrictStr = Field("/", description="the file-system root under which doctor "
                                 "reads other tools' files on an SR-IOV host (/etc/modprobe.d, "
                                 "tmpfiles.d, sysfs.conf, driverctl.d, udev rules, "
                                 "/lib/modules, /var/lib/dkms)")
    qemu_conf: StrictStr = Field("/etc/libvirt/qemu.conf", description="libvirt's QEMU "
                                 "settings, whose user doctor names in the X display access "
                                 "a gtk-gl VM needs")
    sriov_vfs: dict[PciAddress, Annotated[StrictInt, Field(ge=1, le=0xffff)]] = Field(
        {}, description="the VF count gvtd keeps on an SR-IOV parent once it makes VFs "
        "there: an inline table from the parent's PCI address (quoted, as `gvt-client "
        "parents` shows it) to the count; without one gvtd makes as many as the definitions "
        "need, and a new definition then changes the count through 0, which is refused "
        "while a domain runs on a VF of that parent")


@dataclass(frozen=True)
class Problem:
    """A configuration file that could not be used, with where and why."""

    file: str
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.reason}"


def _problems_from(file: Path, error: ValidationError) -> list[Problem]:
    out = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or ""
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown setting"
        out.append(Problem(str(file), field, msg))
    return out


def request_error(error: ValidationError) -> InvalidArgument:
    """Turn a validation failure of a D-Bus request into one readable sentence."""
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = f"unknown key; valid keys are name, {', '.join(Definition.model_fields)}"
        parts.append(f"{field}: {msg}" if field else msg)
    return InvalidArgument("; ".join(parts) + ".")


def _read_toml(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        raw = f.read(MAX_FILE_SIZE + 1)
    if len(raw) > MAX_FILE_SIZE:
        raise ValueError(f"file is larger than {MAX_FILE_SIZE // 1024} KiB")
    return tomllib.loads(raw.decode("utf-8"))


def _load_one(path: Path, model: type[BaseModel], context: dict[str, Any] | None = None
              ) -> tuple[BaseModel | None, list[Problem]]:
    try:
        data = _read_toml(path)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return None, [Problem(str(path), "", f"cannot be read: {reason}")]
    try:
        return model.model_validate(data, context=context), []
    except ValidationError as e:
        return None, _problems_from(path, e)


def uuid_namespace(machine_id_file: Path) -> uuidlib.UUID:
    """`systemd-id128 machine-id --app-specific=APP_ID`: a per-machine namespace that does
    not disclose the machine id itself (machine-id(5) asks for that). ValueError saying what
    to do when the machine has no lasting id: a UUID made up now would change at the next
    boot, and with it the domain XML that names it."""
    fix = ("write a uuid into the file (`uuidgen` prints one) and run `gvt-client reload`"
           ", or give the machine its id with systemd-machine-id-setup")
    try:
        st = os.lstat(machine_id_file)
        text = machine_id_file.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        raise ValueError(f"no uuid given, and {machine_id_file} does not exist to derive "
                         f"a lasting one from: {fix}") from None
    except OSError as e:
        raise ValueError(f"no uuid given, and {machine_id_file} cannot be read "
                         f"({e.strerror}) to derive a lasting one from: {fix}") from None
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        what = "is empty" if not text else f"holds {text[:40]!r}, not a machine id"
        raise ValueError(f"no uuid given, and {machine_id_file} {what}: {fix}")
    if stat.S_ISREG(st.st_mode) and st.st_dev != os.stat(machine_id_file.parent).st_dev:
        # systemd mounts a made-up id there for one boot when /etc cannot keep one
        raise ValueError(f"no uuid given, and {machine_id_file} is mounted over for this "
                         "boot only (/etc was read-only or the file empty at boot): a UUID "
                         f"derived from it would change at the next boot; {fix} "
                         "(systemd-machine-id-commit keeps the current one)")
    digest = bytearray(hmac.new(bytes.fromhex(text), APP_ID.bytes, hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40  # version 4 and the RFC 4122 variant, as systemd
    digest[8] = (digest[8] & 0x3F) | 0x80
    return uuidlib.UUID(bytes=bytes(digest))


def derived_uuid(namespace: uuidlib.UUID, name: str) -> str:
    """The UUID of a definition written without one: name-based (RFC 4122 version 5), so
    distinct names never share one and the same name always gets the same."""
    return str(uuidlib.uuid5(namespace, name))


class ConfigDir:
    """The configuration directory: settings plus the vgpus.d definitions."""

    def __init__(self, path: Path, machine_id_file: Path = MACHINE_ID_FILE) -> None:
        self.path = path
        self.machine_id_file = machine_id_file
        self.definitions_dir = path / DEFINITIONS_DIR
        # Files of the last load that failed validation: a Define of their name says so.
        self.invalid: set[str] = set()
        # The namespace of derived UUIDs (or why there is none), during a load.
        self._namespace: uuidlib.UUID | str | None = None

    def load_settings(self) -> tuple[Settings, list[Problem]]:
        try:
            settings, problems = _load_one(self.path / SETTINGS_FILE, Settings)
        except FileNotFoundError:
            return Settings(), []
        return (settings or Settings()), problems  # type: ignore[return-value]

    def load_definitions(self) -> tuple[dict[str, Definition], list[Problem]]:
        """Read every NAME.toml; a bad file is a Problem and the others still load."""
        defs: dict[str, Definition] = {}
        problems: list[Problem] = []
        try:
            entries = sorted(os.listdir(self.definitions_dir))
        except FileNotFoundError:
            return defs, problems
        except OSError as e:
            return defs, [Problem(str(self.definitions_dir), "", f"cannot be read: {e.strerror}")]
        remove_temporaries(self.definitions_dir, entries)
        self._namespace = None  # read the machine id again: it may have been set up since
        loaded: list[tuple[bool, str, Path, Definition]] = []
        for entry in entries:
            if entry.startswith(".") or not entry.endswith(".toml"):
                continue  # editor backups and our own temporary files
            path = self.definitions_dir / entry
            name = entry.removesuffix(".toml")
            if not NAME_RE.fullmatch(name):
                problems.append(Problem(str(path), "", "file name is not a valid vGPU name"))
                continue
            derived: list[bool] = []  # whether the uuid was derived, set by _derive
            try:
                definition, errs = _load_one(path, Definition, {"derive_uuid": partial(
                    self._derive, name, derived)})
            except FileNotFoundError:
                continue  # removed while we listed
            problems += errs
            if definition is not None:
                assert isinstance(definition, Definition)
                loaded.append((bool(derived), name, path, definition))
        # A UUID written in a file wins over one derived for another file.
        by_uuid: dict[str, str] = {}
        for derived_one, name, path, definition in sorted(loaded, key=lambda t: t[:2]):
            if definition.uuid in by_uuid:
                other = by_uuid[definition.uuid]
                problems.append(Problem(str(path), "uuid", (
                    f"{definition.uuid}, derived from the machine id and the name, is already "
                    f"used by {other}: write a uuid of its own into this file")
                    if derived_one else f"already used by {other}"))
                continue
            by_uuid[definition.uuid] = name
            defs[name] = definition
        defs = dict(sorted(defs.items()))
        self.invalid = {p.file for p in problems}
        return defs, problems

    def _derive(self, name: str, derived: list[bool]) -> str:
        """A file's missing uuid, from the machine id read once per load."""
        if self._namespace is None:
            try:
                self._namespace = uuid_namespace(self.machine_id_file)
            except ValueError as e:
                self._namespace = str(e)
        if isinstance(self._namespace, str):
            raise ValueError(self._namespace)
        derived.append(True)
        return derived_uuid(self._namespace, name)

    def definition_path(self, name: str) -> Path:
        return self.definitions_dir / f"{validate_name(name)}.toml"

    def save_definition(self, name: str, definition: Definition) -> None:
        """Write a new NAME.toml, never over a file already there: gvtd did not load it
        (written by hand since the last reload, or invalid), so it is someone's to keep."""
        path = self.definition_path(name)
        try:
            self.definitions_dir.mkdir(parents=True, exist_ok=True)
            create_new(path, definition.to_toml())
        except FileExistsError:
            raise self._in_the_way(path) from None
        except OSError as e:
            raise Failed(f"Could not write {path}: {e.strerror}. Nothing was changed; "
                         "check that the disk has room and the directory is writable.") from e

    def _in_the_way(self, path: Path) -> Busy:
        if str(path) in self.invalid:
            return Busy(f"{path} already exists and failed validation (`gvt-client status` "
                        "says why), so gvtd leaves it alone and wrote nothing. Fix it and "
                        "run `gvt-client reload`, or remove it and define again.")
        return Busy(f"{path} already exists and gvtd has not loaded it (written since the "
                    "last reload), so gvtd leaves it alone and wrote nothing. Run `gvt-client "
                    "reload` to use it, or remove it and define again.")

    def delete_definition(self, name: str) -> None:
        path = self.definition_path(name)
        try:
            path.unlink()
            fsync_dir(path.parent)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise Failed(f"Could not remove {path}: {e.strerror}.") from e


T = TypeVar("T")
# One thread for every durable write the daemon makes (definitions, the ownership record):
# the loop never waits for a disk, and the writes keep the order in which they were asked.
_DISK = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gvtd-disk")


async def on_disk(write: Callable[..., T], *args: Any) -> T:
    """Run a blocking write (its fsyncs) in the disk thread and wait for it."""
    return await asyncio.get_running_loop().run_in_executor(_DISK, partial(write, *args))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# atomic_write's temporary file: .NAME.XXXXXXXX.tmp (tempfile.mkstemp's 8 random characters)
TEMPORARY_RE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_temporaries(directory: Path, entries: list[str]) -> None:
    """Remove what an atomic_write killed half way left: its target is whole (the old or the
    new content), the temporary file is litter that would pile up with every crash.
    Only at load, when no write of ours is in progress."""
    for entry in entries:
        if TEMPORARY_RE.fullmatch(entry):
            try:
                (directory / entry).unlink()
                log.info("Removed %s, left by an interrupted write", directory / entry)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("Cannot remove %s, left by an interrupted write: %s",
                            directory / entry, e.strerror)


def _write_temporary(path: Path, text: str | bytes, mode: int) -> str:
    """A synced temporary file beside path (.NAME.XXXXXXXX.tmp) holding text (UTF-8) or
    bytes as they are; its name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomic_write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    """Write a file so that a crash at any point leaves the old or the new content.

    Temporary file in the same directory, fsync, rename over the target, fsync the directory.
    """
    tmp = _write_temporary(path, text, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def create_new(path: Path, text: str, mode: int = 0o644) -> None:
    """Create a file that must not exist, whole or not at all; FileExistsError if it does.

    link(2) of the synced temporary file to the name fails with EEXIST whenever anything is
    there, even a file that appeared after any check a caller made: there is no window in
    which another file could be replaced. A crash leaves no file or the whole one (and at
    worst the temporary file, which load removes).
    """
    tmp = _write_temporary(path, text, mode)
    try:
        os.link(tmp, path)
    finally:
        _unlink_quietly(tmp)
    fsync_dir(path.parent)

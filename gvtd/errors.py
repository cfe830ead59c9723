"""Named errors. Each carries a sentence a person can act on and maps to one D-Bus error."""

from __future__ import annotations

from gvtd import names


class GvtdError(Exception):
    """Base of every error gvtd reports; `name` is the suffix of the D-Bus error name."""

    name = "Failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def dbus_name(self) -> str:
        return names.ERROR_PREFIX + self.name


class InvalidArgument(GvtdError):
    name = "InvalidArgument"


class NotFound(GvtdError):
    name = "NotFound"


class NoCapacity(GvtdError):
    name = "NoCapacity"


class ParentMissing(GvtdError):
    name = "ParentMissing"


class Busy(GvtdError):
    name = "Busy"


class LibvirtUnavailable(GvtdError):
    name = "LibvirtUnavailable"


class Failed(GvtdError):
    name = "Failed"


ALL: tuple[type[GvtdError], ...] = (
    InvalidArgument, NotFound, NoCapacity, ParentMissing, Busy, LibvirtUnavailable, Failed,
)

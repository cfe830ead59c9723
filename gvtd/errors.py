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
    """The request itself is wrong (a name, key, type or value); as is, it fails again."""

    name = "InvalidArgument"


class NotFound(GvtdError):
    """No such definition, vGPU, domain or UUID."""

    name = "NotFound"


class NoCapacity(GvtdError):
    """The GPU has no room for the type: its aperture or fences are used up (ENOSPC)."""

    name = "NoCapacity"


class ParentMissing(GvtdError):
    """The vGPU's parent device is not registered (for GVT-g: kvmgt is not loaded)."""

    name = "ParentMissing"


class Busy(GvtdError):
    """In the way: a VM has the vGPU open, the UUID exists already, the domain has a
    vGPU already, or it did not shut down in time."""

    name = "Busy"

    def __init__(self, message: str, domain: str = "") -> None:
        """domain: the running domain in the way, when one is: once it stops, what it
        refused can be done (gvtd.host tries an automatic create again then)."""
        super().__init__(message)
        self.domain = domain


class LibvirtUnavailable(GvtdError):
    """libvirtd cannot be reached; gvtd reconnects by itself."""

    name = "LibvirtUnavailable"


class Failed(GvtdError):
    """Anything else, such as the kernel or libvirt refusing for another reason."""

    name = "Failed"


ALL: tuple[type[GvtdError], ...] = (
    InvalidArgument, NotFound, NoCapacity, ParentMissing, Busy, LibvirtUnavailable, Failed,
)

"""Every public name of gvtd's D-Bus API, shared by the daemon, the client and the tests.

One module so that a name can never differ between the side that exports it and the side
that calls it (the same rule bolt follows with its bolt-names.h).
"""

from __future__ import annotations

BUS_NAME = "io.github.gvtd1"
ROOT_PATH = "/io/github/gvtd1"

MANAGER_IFACE = "io.github.gvtd1.Manager"
PARENT_IFACE = "io.github.gvtd1.Parent"
VGPU_IFACE = "io.github.gvtd1.VGPU"
DOMAIN_IFACE = "io.github.gvtd1.Domain"

# The emulated host's controls (gvtd --simulate only). The supervisor owns its own name so
# that the daemon under it can restart without the Simulator going away.
SIMULATOR_BUS_NAME = "io.github.gvtd1.Simulator"
SIMULATOR_IFACE = "io.github.gvtd1.Simulator"
SIMULATOR_PATH = "/io/github/gvtd1/simulator"

OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"

PARENT_PREFIX = f"{ROOT_PATH}/parent"
VGPU_PREFIX = f"{ROOT_PATH}/vgpu"
DOMAIN_PREFIX = f"{ROOT_PATH}/domain"

ERROR_PREFIX = "io.github.gvtd1.Error."
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"

# Diagnose's finding about the X display a gtk-gl VM opens its window on: the daemon emits
# x-access:USER@DISPLAY, and gvt-client doctor checks it in the desktop session.
CHECK_X_ACCESS = "x-access:"

# A domain's sound goes to a PulseAudio socket of its own in the runtime directory of the
# user who attached it, derived from the uid the bus reports for that caller (never a path
# a caller names). Diagnose emits sound-access:USER@SOCKET for QEMU's user, which
# gvt-client checks in that user's session; a dry run of AttachVGPU with audio ends with a
# line "# sound: USER@SOCKET" naming what the caller's session must grant.
CHECK_SOUND = "sound-access:"
SOUND_LINE = "# sound: "
# AttachVGPU of an SR-IOV VF ends with a line "# picture: ..." saying what shows the guest
# (a VF has no display of its own).
PICTURE_LINE = "# picture: "


def sound_socket(uid: int) -> str:
    return f"/run/user/{uid}/gvtd-sound/native"


# Where Windows' virtio drivers come from (gvt-client new, NewDomain's refusal without them).
VIRTIO_WIN_URL = ("https://fedorapeople.org/groups/virt/virtio-win/direct-downloads/"
                  "stable-virtio/virtio-win.iso")
VIRTIO_WIN_DEFAULT = "/usr/share/virtio-win/virtio-win.iso"  # Fedora's virtio-win package

# polkit action ids
ACTION_MANAGE = "io.github.gvtd1.manage"
ACTION_VGPU = "io.github.gvtd1.vgpu"
ACTION_DOMAIN = "io.github.gvtd1.domain"


def escape_path_element(text: str) -> str:
    """Escape text into one object-path element, as sd_bus_path_encode does.

    Every byte outside [A-Za-z0-9] becomes _XX, so `0000:00:02.0` and a UUID each map to
    exactly one path and back.
    """
    if not text:
        return "_"
    out = []
    for byte in text.encode():
        ch = chr(byte)
        if ch.isascii() and ch.isalnum():
            out.append(ch)
        else:
            out.append(f"_{byte:02x}")
    return "".join(out)


def unescape_path_element(element: str) -> str:
    """Reverse escape_path_element."""
    if element == "_":
        return ""
    data = bytearray()
    i = 0
    while i < len(element):
        if element[i] == "_" and i + 2 < len(element) + 0 and i + 3 <= len(element):
            data.append(int(element[i + 1 : i + 3], 16))
            i += 3
        else:
            data.append(ord(element[i]))
            i += 1
    return data.decode()


def parent_path(address: str) -> str:
    return f"{PARENT_PREFIX}/{escape_path_element(address)}"


def vgpu_path(uuid: str) -> str:
    return f"{VGPU_PREFIX}/{escape_path_element(uuid)}"


def domain_path(name: str) -> str:
    return f"{DOMAIN_PREFIX}/{escape_path_element(name)}"

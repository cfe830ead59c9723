"""gvt-client view: open a VM's display the way its display mode needs.

SPICE listening nowhere (what `attach` and `new` write) is reached only through libvirt, so
virt-viewer attaches to the domain over the user's own libvirt connection (`virt-viewer
--attach`, the guide's command, without its sudo -E: libvirt's own authorization applies).
With gtk-gl, QEMU's window is on the desktop already: there is nothing to open.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
from typing import TYPE_CHECKING, Any

from gvtd import names
from gvtd.client import sound
from gvtd.client.errors import ClientError

if TYPE_CHECKING:
    from gvtd.client.main import Client

HELP = "open a VM's display (virt-viewer attached through libvirt)"
EPILOG = """\
examples:
  gvt-client view win11             virt-viewer on the running VM
  gvt-client view --start win11     start it through gvtd first (what a desktop launcher runs)
  gvt-client view --print win11     print the virt-viewer command instead of running it
"""
VIEWER = "virt-viewer"


def add_parser(add: Any) -> None:
    s = add("view", HELP, cmd_view)
    s.epilog = EPILOG
    s.formatter_class = argparse.RawDescriptionHelpFormatter
    s.add_argument("domain", help="libvirt domain name")
    s.add_argument("--start", action="store_true",
                   help="start the domain through gvtd first (with its vGPUs) if it is not "
                        "running")
    s.add_argument("--print", action="store_true",
                   help="print the viewer's command line and run nothing")


async def _domain(c: Client, name: str) -> dict[str, Any]:
    """The Domain object's properties; {} for a domain gvtd shows none of (no vGPU)."""
    path = names.domain_path(name)
    try:
        (props,) = await c.call("GetAll", "s", [names.DOMAIN_IFACE], path=path,
                                interface=names.PROPERTIES_IFACE)
    except ClientError:
        return {}
    return {k: v.value for k, v in props.items()}


async def cmd_view(c: Client, args: argparse.Namespace) -> None:
    manager = await c.manager()
    domain = await _domain(c, args.domain)
    display = domain.get("Display", "spice")  # what `new --no-vgpu` and virt-manager make
    if args.start and domain.get("State") != "running":
        print(f"Starting {args.domain}...", flush=True)
        await sound.before_start(c)
        await c.call("StartDomain", "sa{sv}", [args.domain, {}])
    if display == "gtk-gl":
        print(f"{args.domain} shows itself in QEMU's own window on your desktop (gtk-gl): "
              "there is nothing to open.")
        return
    if display == "none":
        raise ClientError(f"{args.domain} has no display (attached with --display none): use "
                          "a remote desktop inside Windows, or `gvt-client attach` with "
                          "another --display.")
    cmd = [VIEWER, "--connect", manager.get("LibvirtURI") or "qemu:///system", "--attach",
           "--wait", args.domain]
    if args.print:
        print(shlex.join(cmd))
        return
    viewer = shutil.which(VIEWER)
    if viewer is None:
        raise ClientError(f"virt-viewer is not installed: install the virt-viewer package "
                          f"(apt install virt-viewer), then run this again. Its command would "
                          f"be: {shlex.join(cmd)}")
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        raise ClientError(f"No graphical session here (DISPLAY and WAYLAND_DISPLAY are unset): "
                          f"run it from your desktop, where it runs: {shlex.join(cmd)}")
    c.bus.disconnect()
    os.execv(viewer, cmd)

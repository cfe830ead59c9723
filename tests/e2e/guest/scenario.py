#!/usr/bin/python3
"""The end-to-end scenario, run inside the VM by gvtd-e2e.service at every boot.

It records what it sees as JSON lines on the second serial port (/dev/ttyS1) and decides
nothing: the host's pytest asserts each step. Boot 1 drives gvtd through the real kernel's
mdev core with the sample drivers (mtty, mdpy, mbochs), then reboots; boot 2 looks at what
came back, stops gvtd and powers off. Waits are on events (udevadm wait, gvt-client
monitor), each with a deadline so that a broken step is reported instead of hanging.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import subprocess
import threading
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATE = Path("/var/lib/gvtd-e2e/state.json")
PORT = "/dev/ttyS1"
MDEVS = Path("/sys/bus/mdev/devices")
BUS = Path("/sys/class/mdev_bus")
USERS = {"alice": 1000, "bob": 1001, "carol": 1002}  # carol is in group libvirt
DEFINED = {"tty0": ("mtty-2", "mtty"), "fb0": ("mbochs-small", "mbochs")}
WAIT = 60  # seconds: the deadline of every wait


def emit(step: str, **data: Any) -> None:
    line = json.dumps({"phase": PHASE, "step": step, **data}) + "\n"
    fd = os.open(PORT, os.O_WRONLY | os.O_NOCTTY)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def sh(*cmd: str, user: str | None = None, timeout: float = 120) -> dict[str, Any]:
    if user is not None:
        uid = USERS[user]
        cmd = ("setpriv", f"--reuid={uid}", f"--regid={uid}", "--init-groups", *cmd)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"})
    except subprocess.TimeoutExpired:
        return {"cmd": list(cmd), "rc": None, "out": "", "err": "timed out"}
    return {"cmd": list(cmd), "rc": p.returncode, "out": p.stdout, "err": p.stderr}


def client(*args: str, user: str | None = None) -> dict[str, Any]:
    return sh("gvt-client", *args, user=user)


def client_json(*args: str, user: str | None = None) -> Any:
    r = client(*args, "--json", user=user)
    return json.loads(r["out"]) if r["rc"] == 0 else r


def write(path: Path, text: str) -> str | None:
    """Write as `echo > file` does; the errno's name when the kernel refuses."""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    return None


def mdev(u: str) -> dict[str, str | None] | None:
    """What sysfs shows of an mdev. Its `mdev_type` link comes a moment after the device
    (and its uevents): a device seen in between has type None."""
    dev = MDEVS / u
    if not dev.exists():
        return None
    try:
        type_id: str | None = os.path.basename(os.readlink(dev / "mdev_type"))
    except OSError:
        type_id = None
    return {"type": type_id, "parent": os.path.basename(os.path.dirname(os.path.realpath(dev)))}


def udev_wait(u: str) -> int | None:
    """Until the mdev exists, on udev's events."""
    return sh("udevadm", "wait", "--initialized=no", f"--timeout={WAIT}", str(MDEVS / u),
              timeout=WAIT + 10)["rc"]


def show(unit: str, *props: str) -> dict[str, str]:
    out = sh("systemctl", "show", unit, "-p", ",".join(props))["out"]
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def uuids() -> dict[str, str]:
    vgpus = client_json("list")
    return {v["name"]: v["uuid"] for v in vgpus if v["name"]} if isinstance(vgpus, list) else {}


class Monitor:
    """`gvt-client monitor --json` in the background, its lines on a queue."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["gvt-client", "monitor", "--json"],
                                     stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.until(lambda e: e.get("event") == "ready")

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def until(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        while True:
            try:
                event = self.lines.get(timeout=WAIT)
            except queue.Empty:
                return None
            if event is None or pred(event):
                return event

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def state_of(name: str, wanted: str, seen: list[str]) -> Callable[[dict[str, Any]], bool]:
    """A monitor event that sets vGPU `name` to state `wanted`; every state on the way is
    appended to `seen`."""
    def pred(event: dict[str, Any]) -> bool:
        state = event.get("properties", {}).get("State")
        if event.get("kind") != "vgpu" or event.get("name") != name or state is None:
            return False
        seen.append(state)
        return bool(state == wanted)
    return pred


def bus_error(method: str, signature: str, *body: Any) -> str | None:
    """Call a Manager method on the system bus; the D-Bus error name it answers, if any."""
    import asyncio

    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    async def call() -> str | None:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        try:
            reply = await bus.call(Message(
                destination="io.github.gvtd1", path="/io/github/gvtd1",
                interface="io.github.gvtd1.Manager", member=method, signature=signature,
                body=list(body)))
        finally:
            bus.disconnect()
        return reply.error_name if reply and reply.message_type == MessageType.ERROR else None
    return asyncio.run(call())


# -- boot 1 ---------------------------------------------------------------------------------

def service() -> None:
    emit("service", active=sh("systemctl", "is-active", "gvtd")["out"].strip(),
         show=show("gvtd", "Type", "ActiveState", "SubState", "StatusText", "NRestarts"),
         status=sh("systemctl", "status", "--no-pager", "gvtd")["out"])


def define() -> None:
    results = [client("define", name, "--type", t, "--parent", p, "--start", "auto")
               for name, (t, p) in DEFINED.items()]
    ids = uuids()
    emit("define", results=results, uuids=ids,
         sysfs={name: mdev(u) for name, u in ids.items()},
         parents={p.name: os.path.realpath(p) for p in BUS.iterdir()})


def reads() -> None:
    out: dict[str, Any] = {}
    for user in (None, "alice"):
        out[user or "root"] = {cmd: client_json(cmd, user=user)
                               for cmd in ("parents", "types", "list")}
    desc = {t.name: (t / "description").exists()
            for t in (BUS / "mtty/mdev_supported_types").iterdir()}
    emit("reads", **out, mtty_description_files=desc)


def doctor() -> None:
    """Diagnose reads the real /sys, /proc and kernel log from inside gvtd's sandbox."""
    emit("doctor", result=client("doctor"), checks=client_json("doctor"))


GVT = Path("/sys/module/gvtd_e2e_gvt/parameters")  # guest/gvtd_e2e_gvt.c


def health() -> None:
    """The kernel prints GVT-g's words for vgpu 7, which the test module made tty0's
    intel_vgpu/vgpu_id; a process writes the same words into /dev/kmsg first ("<3>"
    prefix: facility user). Only the kernel's own reaches tty0's Health."""
    u = uuids().get("tty0", "")
    out: dict[str, Any] = {"named": write(GVT / "vgpu", f"{u} 7")}
    try:
        out["vgpu_id"] = (MDEVS / u / "intel_vgpu/vgpu_id").read_text().strip()
    except OSError as e:
        out["vgpu_id"] = str(e)
    mon = Monitor()
    try:
        out["injected"] = write(Path("/dev/kmsg"), "<3>gvt: vgpu 7: written by a process\n")
        out["said"] = write(GVT / "say", "gvt: vgpu 7: fail to emulate MMIO read 00064320")
        out["event"] = mon.until(lambda e: e.get("name") == "tty0"
                                 and "Health" in e.get("properties", {}))
    finally:
        mon.close()
    out["list"] = client_json("list")
    out["problems"] = client_json("status")
    out["kmsg"] = [line for line in sh("dmesg", "-r")["out"].splitlines() if "vgpu 7" in line]
    emit("health", **out)


# Run inside gvtd's mount namespace (nsenter), as root with every capability: only the
# sandbox's read-only mounts can refuse the write. Prints "ok" or the errno's name.
WRITE_IN_SANDBOX = """import errno, os, sys
try:
    fd = os.open(sys.argv[1], os.O_WRONLY)
    try:
        os.write(fd, sys.argv[2].encode())
    finally:
        os.close(fd)
    print("ok")
except OSError as e:
    print(errno.errorcode.get(e.errno or 0, str(e.errno)))
"""
GPU = Path("/sys/devices/pci0000:00/0000:00:02.0")  # the unit opens it; here not an iGPU


def sandbox() -> None:
    """What the unit lets gvtd write in /sys, tried from inside its mount namespace: a
    root-writable file elsewhere under /sys/devices, the PCI files of 0000:00:02.0 the unit
    makes read-only again, a file of a device below it, and /sys/devices/virtual (the
    drop-in's, for the sample parents)."""
    pid = show("gvtd", "MainPID")["MainPID"]

    def inside(path: Path | str, text: str) -> str:
        r = sh("nsenter", "-t", pid, "-m", "python3", "-c", WRITE_IN_SANDBOX, str(path), text)
        return r["out"].strip() or r["err"]

    outside = Path("/sys/devices/system/cpu/cpu0/uevent")
    # a device below it (not a link out of it, like driver/ or subsystem/)
    below = sorted(p for p in GPU.glob("*/uevent") if not p.parent.is_symlink())
    emit("sandbox", pid=pid, paths=show("gvtd", "ReadWritePaths", "ReadOnlyPaths"),
         outside=inside(outside, "change"),
         outside_from_host=write(outside, "change"),
         gpu=os.path.realpath(GPU) if GPU.exists() else None,
         gpu_driver_override=inside(GPU / "driver_override", "\n"),
         gpu_config=inside(GPU / "config", ""),
         gpu_below=[str(below[0]), inside(below[0], "change")] if below else None,
         virtual=inside("/sys/devices/virtual/mem/null/uevent", "change"),
         mounts=[line for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                 if " /sys" in line])


def polkit() -> None:
    for name in ("m1", "m2"):
        client("define", name, "--type", "mtty-1", "--parent", "mtty", "--start", "manual")
    ids = uuids()
    out = {
        "alice_define": client("define", "m3", "--type", "mtty-1", "--parent", "mtty",
                               "--start", "manual", user="alice"),
        "alice_create": client("create", "m1", user="alice"),
        "alice_created": mdev(ids.get("m1", "")),
        "bob_create": client("create", "m2", user="bob"),
        "bob_created": mdev(ids.get("m2", "")),
        "alice_remove": client("remove", "m1", user="alice"),
        "alice_removed": mdev(ids.get("m1", "")),
    }
    for name in ("m1", "m2"):
        client("undefine", name)
    emit("polkit", **out)


# A Manager call as a user, never interactive (no agent would answer): its error's name
# and text, or empty strings when it succeeded.
AS_USER = """if True:
    import asyncio, json, sys
    from dbus_fast import BusType, Message, MessageType, Variant
    from dbus_fast.aio import MessageBus
    async def go():
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        reply = await bus.call(Message(
            destination="io.github.gvtd1", path="/io/github/gvtd1",
            interface="io.github.gvtd1.Manager", member=sys.argv[1], signature="sa{sv}",
            body=[sys.argv[2], {}]))
        err = reply.message_type == MessageType.ERROR
        print(json.dumps([reply.error_name if err else "",
                          reply.body[0] if err and reply.body else ""]))
    asyncio.run(go())
"""


def call_as(user: str | None, member: str, domain: str) -> Any:
    r = sh("python3", "-c", AS_USER, member, domain, user=user)
    return json.loads(r["out"]) if r["rc"] == 0 else r


def domains() -> None:
    """Who gets through gvtd's gate for a domain, decided by the real polkitd: alice by the
    one-user-one-VM rule of docs/security.md (win10 only), carol by the shipped rule for
    group libvirt (any domain), bob by neither. Past the gate the call fails because the
    guest has no libvirt: LibvirtUnavailable is the proof that the gate let it through."""
    out = {f"{user}_{domain}": call_as(user, "StartDomain", domain)
           for user in ("alice", "bob", "carol") for domain in ("win10", "other")}
    out["carol_release"] = call_as("carol", "ReleaseDomain", "win10")  # the hook's: root's
    out["root_release"] = call_as(None, "ReleaseDomain", "win10")
    out["alice_cli"] = client("start", "win10", user="alice")
    out["bob_cli"] = client("start", "win10", user="bob")
    emit("domains", **out)


def sysfs_remove() -> None:
    """Remove by hand, then wait for gvtd to say the vGPU is active again (its create has
    returned, so the mdev is complete)."""
    u = uuids()["tty0"]
    mon = Monitor()
    try:
        written = write(MDEVS / u / "remove", "1")
        gone = mdev(u)
        states: list[str] = []
        back = mon.until(state_of("tty0", "active", states))
    finally:
        mon.close()
    emit("sysfs_remove", written=written, right_after=gone, event=back, states=states,
         now=mdev(u), list=client_json("list"))


def foreign() -> None:
    """An mdev created by hand: Linux sends its uevents before it adds the `mdev_type` link,
    and nothing after; gvtd must still show it, with its type, and forget it when removed."""
    from gvtd import names

    u = str(uuid.uuid4())
    path = names.vgpu_path(u)
    mon = Monitor()
    try:
        written = write(BUS / "mtty/mdev_supported_types/mtty-1/create", u)
        added = mon.until(lambda e: e.get("event") == "added" and e.get("path") == path)
        removed = write(MDEVS / u / "remove", "1")
        gone = mon.until(lambda e: e.get("event") == "removed" and e.get("path") == path)
    finally:
        mon.close()
    emit("foreign", written=written, added=added, removed=removed, gone=gone)


def reload_module() -> None:
    u = uuids()["tty0"]
    mon = Monitor()
    try:
        rmmod = sh("rmmod", "mtty")
        states: list[str] = []
        missing = mon.until(state_of("tty0", "parent-missing", states))
        during = client_json("list")
        gone = mdev(u)
        modprobe = sh("modprobe", "mtty")
        back = udev_wait(u)
        active = mon.until(state_of("tty0", "active", states))
    finally:
        mon.close()
    emit("reload_module", rmmod=rmmod, event=missing, states=states, list_during=during,
         mdev_during=gone,
         modprobe=modprobe, wait_rc=back, event_after=active, mdev_after=mdev(u))


def fill(parent: str, type_id: str) -> dict[str, Any]:
    """Create mdevs by hand until the kernel says no; then ask gvtd's own sysfs code and
    gvt-client for one more, and clean up."""
    from gvtd.errors import GvtdError
    from gvtd.mdev import Sysfs

    tdir = BUS / parent / "mdev_supported_types" / type_id
    made: list[str] = []
    refused = None
    for _ in range(64):
        u = str(uuid.uuid4())
        refused = write(tdir / "create", u)
        if refused:
            break
        made.append(u)
    out: dict[str, Any] = {"made": len(made), "errno": refused,
                           "available": (tdir / "available_instances").read_text().strip()}
    sysfs = Sysfs()
    try:
        sysfs.create(sysfs.parent(parent), type_id, str(uuid.uuid4()))  # type: ignore[arg-type]
        out["gvtd_error"] = None
    except GvtdError as e:
        out["gvtd_error"] = [type(e).__name__, e.message]
    client("define", "over", "--type", type_id, "--parent", parent, "--start", "manual")
    out["client_create"] = client("create", "over")
    out["bus_error"] = bus_error("CreateVGPU", "s", "over")
    client("undefine", "over")
    for u in made:
        write(MDEVS / u / "remove", "1")
    return out


def errors() -> None:
    from gvtd.errors import GvtdError
    from gvtd.mdev import Sysfs

    u = uuids()["tty0"]
    out = {"mtty": fill("mtty", "mtty-2"), "mbochs": fill("mbochs", "mbochs-large"),
           "mdpy": fill("mdpy", "mdpy-vga")}
    # the same UUID in upper case on another parent: the kernel compares ignoring case
    tdir = BUS / "mdpy/mdev_supported_types/mdpy-vga"
    out["upper_errno"] = write(tdir / "create", u.upper())
    # gvtd takes only the lower-case form, so it never gets that far
    out["upper_define"] = client("define", "up", "--type", "mdpy-vga", "--parent", "mdpy",
                                 "--start", "manual", "--uuid", u.upper())
    out["upper_define_file"] = Path("/etc/gvtd/vgpus.d/up.toml").exists()
    sysfs = Sysfs()
    try:
        sysfs.create(sysfs.parent("mdpy"), "mdpy-vga", u)  # type: ignore[arg-type]
        out["duplicate_gvtd_error"] = None
    except GvtdError as e:
        out["duplicate_gvtd_error"] = [type(e).__name__, e.message]
    emit("errors", **out)


PCI = Path("/sys/bus/pci/devices")
SENTINEL = Path("/sys/devices/virtual/mem/null/uevent")  # a device nothing else touches


class Uevents:
    """The uevents of the real kernel (netlink source "kernel", in the order it sent them)
    and of udev (source "udev", after its rules: what gvtd listens to, in the order udev
    finished them, which is not the kernel's). `collect` returns what arrived since the
    last call: the kernel's up to a synthetic uevent of its own (SYNTH_UUID), which the
    kernel sends after everything sent before; udev's once `udevadm settle` has seen udev
    pass all of those on (the mark, then whatever is queued on the socket)."""

    def __init__(self) -> None:
        import pyudev

        ctx = pyudev.Context()
        self.monitors = {src: pyudev.Monitor.from_netlink(ctx, source=src)
                         for src in ("kernel", "udev")}
        for mon in self.monitors.values():
            mon.set_receive_buffer_size(4 << 20)
            mon.start()

    def collect(self) -> dict[str, list[dict[str, Any]]]:
        mark = str(uuid.uuid4())
        write(SENTINEL, f"change {mark}")
        settled = sh("udevadm", "settle", f"--timeout={WAIT}")["rc"]
        out: dict[str, list[dict[str, Any]]] = {}
        for src, mon in self.monitors.items():
            seen: list[dict[str, Any]] = []
            marked = False
            while True:
                dev = mon.poll(timeout=0 if marked else WAIT)
                if dev is None:
                    if not marked:
                        seen.append({"timeout": True, "settled": settled})
                    break
                if dev.properties.get("SYNTH_UUID") == mark:
                    if src == "kernel":
                        break
                    marked = True
                    continue
                seen.append(_uevent(dev, src))
            out[src] = seen
        return out


def _uevent(dev: Any, src: str) -> dict[str, Any]:
    props = dict(dev.properties)
    out = {"action": dev.action, "subsystem": dev.subsystem, "name": dev.sys_name,
           "driver": props.get("DRIVER"), "seq": int(props.get("SEQNUM", 0))}
    if src == "kernel":  # the kernel's own keys (udev's side adds its rules' dozens)
        out["keys"] = sorted(k for k in props if k not in ("ACTION", "DEVPATH", "SUBSYSTEM",
                                                            "SEQNUM"))
    return out


def read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))


def link(path: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def sriov_pf() -> Path | None:
    """The one PCI device of the VM with SR-IOV: QEMU's NVMe controller (tests/e2e/vm.py)."""
    for dev in sorted(PCI.iterdir()):
        total = read(dev / "sriov_totalvfs") or ""
        if total.isdigit() and int(total) > 0:
            return dev
    return None


def virtfns(pf: Path) -> dict[str, str]:
    """The PF's virtfnN links, in N order: N -> the VF's PCI address."""
    links = sorted(pf.glob("virtfn*"), key=lambda p: int(p.name[len("virtfn"):]))
    return {p.name[len("virtfn"):]: os.path.basename(os.readlink(p)) for p in links}


def vf_facts(vf: str) -> dict[str, Any]:
    dev = PCI / vf
    group = link(dev / "iommu_group")
    members = sorted(p.name for p in Path(f"/sys/kernel/iommu_groups/{group}/devices").iterdir()) \
        if group else []
    return {"path": os.path.realpath(dev), "physfn": link(dev / "physfn"),
            "driver": link(dev / "driver"), "driver_override": read(dev / "driver_override"),
            "ids": [read(dev / f) for f in ("vendor", "device", "class")],
            "iommu_group": group, "group_devices": members}


def sriov_kernel() -> None:
    """The PCI SR-IOV core of the real kernel, driven by hand (as root, outside gvtd): the
    PF's files, the errnos, the uevents in the kernel's order, and a VF bound to vfio-pci
    with driver_override and drivers_probe. Records only; leaves the PF as it found it."""
    pf = sriov_pf()
    if pf is None:
        emit("sriov_kernel", pf=None, pci=sorted(p.name for p in PCI.iterdir()))
        return
    files = ("sriov_totalvfs", "sriov_numvfs", "sriov_offset", "sriov_stride",
             "sriov_vf_device", "sriov_drivers_autoprobe")
    out: dict[str, Any] = {
        "pf": pf.name, "path": os.path.realpath(pf), "driver": link(pf / "driver"),
        "ids": [read(pf / f) for f in ("vendor", "device", "class")],
        "iommu_group": link(pf / "iommu_group"), "files": {f: read(pf / f) for f in files},
        "cmdline": Path("/proc/cmdline").read_text().strip(),
        "vfio_pci_loaded": Path("/sys/bus/pci/drivers/vfio-pci").is_dir()}
    total = int(out["files"]["sriov_totalvfs"])
    numvfs = pf / "sriov_numvfs"
    ev = Uevents()
    out["autoprobe_off"] = write(pf / "sriov_drivers_autoprobe", "0")
    out["over_total"] = write(numvfs, str(total + 1))
    out["over_total_events"] = ev.collect()
    out["enable"] = write(numvfs, str(total))
    out["enable_events"] = ev.collect()
    out["numvfs_enabled"] = read(numvfs)
    vfs = virtfns(pf)
    out["virtfn"] = vfs
    out["vfs"] = {vf: vf_facts(vf) for vf in vfs.values()}
    out["other_count"] = write(numvfs, "1")
    out["same_count"] = write(numvfs, str(total))
    out["busy_events"] = ev.collect()
    out["dev_vfio_before"] = sorted(os.listdir("/dev/vfio"))  # the mdevs' groups
    bound: dict[str, Any] = {}
    for vf in vfs.values():
        b = {"override": write(PCI / vf / "driver_override", "vfio-pci"),
             "probe": write(Path("/sys/bus/pci/drivers_probe"), vf),
             "driver": link(PCI / vf / "driver")}
        group = out["vfs"][vf]["iommu_group"]
        b["dev_wait"] = sh("udevadm", "wait", f"--timeout={WAIT}", f"/dev/vfio/{group}",
                           timeout=WAIT + 10)["rc"]
        b["dev"] = os.path.exists(f"/dev/vfio/{group}")
        bound[vf] = b
    out["bind"] = bound
    out["bind_events"] = ev.collect()
    out["dev_vfio"] = sorted(os.listdir("/dev/vfio"))
    out["disable"] = write(numvfs, "0")
    out["disable_events"] = ev.collect()
    out["after"] = {"numvfs": read(numvfs), "virtfn": virtfns(pf),
                    "vfs_present": [vf for vf in vfs.values() if (PCI / vf).exists()],
                    "dev_vfio": sorted(os.listdir("/dev/vfio"))}
    out["autoprobe_on"] = write(pf / "sriov_drivers_autoprobe", "1")
    out["kmsg"] = [line for line in sh("dmesg")["out"].splitlines()
                   if pf.name in line or any(vf in line for vf in vfs.values())
                   or "vfio" in line][-60:]
    emit("sriov_kernel", **out)


PF = "0000:01:00.0"  # the NVMe PF of tests/e2e/vm.py
VFS = ("vf0", "vf1")  # one VF each: as many as the PF allows
SETTINGS = Path("/etc/gvtd/gvtd.toml")


def all_active(wanted: tuple[str, ...], seen: dict[str, list[str]]
               ) -> Callable[[dict[str, Any]], bool]:
    """Monitor events until every vGPU in `wanted` was last seen active; the states on the
    way are appended to `seen`."""
    latest: dict[str, str] = {}

    def pred(event: dict[str, Any]) -> bool:
        state = event.get("properties", {}).get("State")
        name = event.get("name")
        if event.get("kind") == "vgpu" and name in wanted and state is not None:
            seen.setdefault(name, []).append(state)
            latest[name] = state
        return all(latest.get(n) == "active" for n in wanted)
    return pred


def vf_state() -> dict[str, Any]:
    """The PF's count and autoprobe, its VFs (driver, IOMMU group) and /dev/vfio."""
    pf = PCI / PF
    vfs = virtfns(pf)
    return {"numvfs": read(pf / "sriov_numvfs"),
            "autoprobe": read(pf / "sriov_drivers_autoprobe"), "virtfn": vfs,
            "vfs": {vf: vf_facts(vf) for vf in vfs.values()},
            "dev_vfio": sorted(os.listdir("/dev/vfio"))}


def vf_erange() -> None:
    """gvtd.toml asks for more VFs on the PF than it allows: the real kernel's ERANGE on
    gvtd's write of the count reaches CreateVGPU's caller as NoCapacity, nothing is made.
    gvtd.toml is then put back."""
    original = SETTINGS.read_text()
    SETTINGS.write_text(original + f'\nsriov_vfs = {{ "{PF}" = {len(VFS) + 1} }}\n')
    out: dict[str, Any] = {"reload": client("reload")}
    out["define"] = client("define", "vf0", "--type", "vf", "--parent", PF,
                           "--start", "manual")
    out["create"] = client("create", "vf0")
    out["bus_error"] = bus_error("CreateVGPU", "s", "vf0")
    out["list"] = client_json("list")
    out["after"] = vf_state()
    SETTINGS.write_text(original)
    out["reload_back"] = client("reload")
    out["undefine"] = client("undefine", "vf0")
    emit("vf_erange", **out)


def vf_define() -> None:
    """Two auto definitions on the PF: gvtd makes a VF for each (the second changes the
    count from 1 to 2, through 0) and binds both to vfio-pci."""
    mon = Monitor()
    seen: dict[str, list[str]] = {}
    try:
        defined = [client("define", name, "--type", "vf", "--parent", PF, "--start", "auto")
                   for name in VFS]
        event = mon.until(all_active(VFS, seen))
    finally:
        mon.close()
    log = sh("journalctl", "-b", "-u", "gvtd", "-o", "cat", "--no-pager")["out"]
    emit("vf_define", defined=defined, event=event, states=seen, list=client_json("list"),
         parents=client_json("parents"), kernel=vf_state(),
         journal=[line for line in log.splitlines()
                  if "through 0" in line or "Created vGPU vf" in line])


def vf_errors() -> None:
    """The real kernel's refusals through gvtd's own SR-IOV sysfs code (as root, beside the
    daemon): a count above totalvfs (ERANGE) and another count while VFs exist (EBUSY);
    and a third definition on a PF with two VFs, on the bus."""
    from gvtd.errors import GvtdError
    from gvtd.sriov import PciSriov

    pci = PciSriov()
    pf = pci.physfn(PF)
    out: dict[str, Any] = {}
    for key, count in (("erange", len(VFS) + 1), ("ebusy", 1)):
        try:
            pci.set_numvfs(pf, count)  # type: ignore[arg-type]
            out[key] = None
        except GvtdError as e:
            out[key] = [type(e).__name__, e.message]
    out["third_define"] = client("define", "vf2", "--type", "vf", "--parent", PF,
                                 "--start", "manual")
    out["third_create"] = client("create", "vf2")
    out["third_bus_error"] = bus_error("CreateVGPU", "s", "vf2")
    out["third_undefine"] = client("undefine", "vf2")
    out["kernel"] = vf_state()
    out["list"] = client_json("list")
    emit("vf_errors", **out)


def phase1() -> None:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    for step in (service, define, reads, doctor, health, sandbox, polkit, domains, sysfs_remove,
                 foreign, reload_module, errors, sriov_kernel, vf_erange, vf_define,
                 vf_errors):
        run(step)
    STATE.parent.mkdir(parents=True, exist_ok=True)
    ids = uuids()
    STATE.write_text(json.dumps({"boot_id": boot_id,
                                 "uuids": {n: u for n, u in ids.items() if n in DEFINED},
                                 "vfs": {n: u for n, u in ids.items() if n in VFS}}))
    os.sync()
    emit("rebooting", boot_id=boot_id, list=client_json("list"))
    sh("systemctl", "reboot", "--no-block")


# -- boot 2 ---------------------------------------------------------------------------------

def after_reboot() -> None:
    before = json.loads(STATE.read_text())
    journal = sh("journalctl", "-b", "-u", "gvtd", "-o", "json", "--no-pager")["out"]
    entries = [json.loads(line) for line in journal.splitlines() if line.startswith("{")]
    # when gvtd sent each entry (journald's socket timestamp), against when systemd saw the
    # process start and READY=1 arrive: all CLOCK_REALTIME microseconds
    created = [{k: e.get(k) for k in ("MESSAGE", "VGPU_NAME", "VGPU_UUID", "PARENT",
                                       "_SOURCE_REALTIME_TIMESTAMP")}
               for e in entries if str(e.get("MESSAGE", "")).startswith("Created vGPU")]
    unit = "/org/freedesktop/systemd1/unit/gvtd_2eservice"
    times = {prop: sh("busctl", "get-property", "org.freedesktop.systemd1", unit,
                      f"org.freedesktop.systemd1.{iface}", prop)["out"].strip()
             for iface, prop in (("Service", "ExecMainStartTimestamp"),
                                 ("Unit", "ActiveEnterTimestamp"))}
    emit("after_reboot", before=before,
         boot_id=Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
         show=show("gvtd", "ActiveState", "StatusText"), times=times, created=created,
         sysfs={name: mdev(u) for name, u in before["uuids"].items()},
         kernel=vf_state(), list=client_json("list"))


def journal() -> None:
    out = sh("journalctl", "-u", "gvtd", "-o", "json", "--no-pager", "VGPU_NAME=tty0")["out"]
    entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    emit("journal", entries=[{k: v for k, v in e.items() if not k.startswith("__")}
                             for e in entries])


def stop() -> None:
    ids = json.loads(STATE.read_text())["uuids"]
    r = sh("systemctl", "stop", "gvtd")
    emit("stop", stop=r, active=sh("systemctl", "is-active", "gvtd")["out"].strip(),
         sysfs={name: mdev(u) for name, u in ids.items()}, kernel=vf_state())


def phase2() -> None:
    for step in (after_reboot, journal, stop):
        run(step)
    emit("done")
    sh("systemctl", "poweroff", "--no-block")


def run(step: Callable[[], None]) -> None:
    try:
        step()
    except Exception:
        emit(step.__name__, error=traceback.format_exc())


PHASE = 2 if STATE.exists() else 1

if __name__ == "__main__":
    phase1() if PHASE == 1 else phase2()

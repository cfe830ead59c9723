"""The guide's VM tuning step as domain XML edits: CPU, Hyper-V enlightenments, SPICE.

tune() makes each part the way the guide recommends and leaves everything else as it was;
running it again changes nothing. checks() lists what the guide advises but gvtd does not
change on its own (the machine type or a disk bus cannot change under an installed Windows).
"""

from __future__ import annotations

from dataclasses import dataclass

from gvtd.cputopo import Topology
from gvtd.errors import InvalidArgument
from gvtd.virt.domxml import Element, _sub, add, parse, remove, serialize

# The guide's enlightenments, plus vpindex: QEMU refuses hv-synic without hv-vpindex (and
# hv-stimer without hv-synic and hv-time, the hypervclock timer below).
HYPERV = ("relaxed", "vapic", "spinlocks", "vpindex", "runtime", "synic", "stimer")
NEEDS = {"synic": ("vpindex",), "stimer": ("synic", "vpindex")}
SPINLOCK_RETRIES = "8191"
# SPICE for a viewer on the same machine: nothing to save by compressing (element, attr, value)
SPICE_SETTINGS = (("image", "compression", "off"), ("jpeg", "compression", "never"),
                  ("zlib", "compression", "never"), ("playback", "compression", "off"),
                  ("streaming", "mode", "off"))
# libvirt's order of a domain's top-level elements, to put a new one where virsh edit shows it
ORDER = ("name", "uuid", "genid", "title", "description", "metadata", "maxMemory", "memory",
         "currentMemory", "blkiotune", "memtune", "memoryBacking", "vcpu", "vcpus", "iothreads",
         "cputune", "numatune", "resource", "sysinfo", "bootloader", "os", "idmap",
         "features", "cpu", "clock")


@dataclass(frozen=True)
class TuneSpec:
    """What to tune; None leaves a part alone."""

    topology: Topology | None  # the host's, for the CPU part
    vcpus: int | None = None  # default: every usable host thread
    pinning: bool = True
    first_core: bool = False  # allow CPU 0's core
    hyperv: frozenset[str] | None = None  # the enlightenments libvirt accepts
    spice: bool = True


@dataclass(frozen=True)
class CpuPlan:
    vcpus: int
    cores: int
    threads: int
    pins: tuple[int, ...]  # host CPU of each vCPU; empty without pinning


def plan_cpus(topo: Topology, vcpus: int | None, pinning: bool, first_core: bool) -> CpuPlan:
    """Guest topology and pins: guest core i's threads (vCPUs 2i, 2i+1) on one host core's
    SMT siblings, cores taken in order from the first one the host can spare."""
    usable = topo.usable(first_core)
    threads = topo.threads
    if vcpus is None:
        vcpus = sum(len(c) for c in usable)
        if not vcpus:
            raise InvalidArgument(
                "The host has no core besides CPU 0's, which the guide leaves to the host: "
                "pin to it anyway with --use-cpu0, or give --vcpus N with --no-pinning.")
    if vcpus < 1 or vcpus > topo.cpus:
        raise InvalidArgument(f"--vcpus {vcpus} is out of range: this host has {topo.cpus} "
                              "logical CPUs.")
    if vcpus % threads:
        raise InvalidArgument(f"With SMT each guest core gets two threads, so the vCPU count "
                              f"must be even (not {vcpus}); try {vcpus + 1} or {vcpus - 1}."
                              if vcpus > 1 else
                              "With SMT each guest core gets two threads: ask for --vcpus 2.")
    cores = vcpus // threads
    pins: tuple[int, ...] = ()
    if pinning:
        if cores > len(usable):
            spare = len(usable) * threads
            skip = "" if first_core else " (CPU 0's core is left to the host; --use-cpu0 " \
                "allows it)"
            raise InvalidArgument(f"Pinning {vcpus} vCPUs needs {cores} host cores, but only "
                                  f"{len(usable)} are free{skip}: ask for at most "
                                  f"--vcpus {spare}, or use --no-pinning.")
        pins = tuple(cpu for core in usable[:cores] for cpu in core)
    return CpuPlan(vcpus, cores, threads, pins)


def _place(root: Element, tag: str) -> Element:
    """The domain's top-level tag, created in libvirt's order when missing."""
    el = root.find(tag)
    if el is not None:
        return el
    before = ORDER[:ORDER.index(tag)] if tag in ORDER else ORDER
    index = 0
    for i, child in enumerate(root):
        if child.tag in before:
            index = i + 1
    return add(root, tag, index=index)


def _tune_cpu(root: Element, plan: CpuPlan) -> None:
    vcpu = _place(root, "vcpu")
    vcpu.text = str(plan.vcpus)
    vcpu.set("placement", "static")
    vcpu.attrib.pop("current", None)  # all of them online
    vcpu.attrib.pop("cpuset", None)  # the pins say where
    vcpus = root.find("vcpus")  # per-vCPU settings for a count that may have changed
    remove(vcpus)
    cputune = root.find("cputune")
    if cputune is not None:
        for pin in cputune.findall("vcpupin"):
            remove(pin)
    if plan.pins:
        cputune = _place(root, "cputune")
        for i, cpu in reversed(list(enumerate(plan.pins))):  # vcpupin goes first
            add(cputune, "vcpupin", {"vcpu": str(i), "cpuset": str(cpu)}, 0)
    if cputune is not None and len(cputune) == 0 and not cputune.attrib:
        remove(cputune)
    cpu = _place(root, "cpu")
    cpu.attrib.pop("match", None)  # (libvirt adds migratable='on' to host-passthrough)
    # TCG (domain type qemu) has no host CPU to pass through: its "maximum" is the nearest
    cpu.set("mode", "maximum" if root.get("type") == "qemu" else "host-passthrough")
    cpu.set("check", "none")
    for tag in ("model", "vendor"):  # a named model means nothing with host-passthrough
        for child in cpu.findall(tag):
            remove(child)
    topology = cpu.find("topology")
    if topology is None:
        topology = add(cpu, "topology", index=0)
    topology.set("sockets", "1")
    if topology.get("dies") is not None:
        topology.set("dies", "1")
    topology.set("cores", str(plan.cores))
    topology.set("threads", str(plan.threads))


def hyperv_wanted(accepted: frozenset[str]) -> list[str]:
    """The guide's enlightenments libvirt accepts, without one whose dependency it lacks."""
    out = [f for f in HYPERV if f in accepted]
    return [f for f in out if all(n in out for n in NEEDS.get(f, ()))]


def _tune_hyperv(root: Element, accepted: frozenset[str]) -> None:
    features = _place(root, "features")
    hyperv = features.find("hyperv")
    if hyperv is not None and hyperv.get("mode") == "passthrough":
        return  # every enlightenment the host has is on already
    wanted = hyperv_wanted(accepted)
    if not wanted:
        return
    if hyperv is None:
        hyperv = add(features, "hyperv", {"mode": "custom"})
    for name in wanted:
        el = _sub(hyperv, name)
        el.set("state", "on")
        if name == "spinlocks":
            el.set("retries", SPINLOCK_RETRIES)
    if "stimer" in wanted:  # hv-stimer needs hv-time: libvirt's hypervclock timer
        clock = _place(root, "clock")
        if clock.get("offset") is None:  # libvirt wants one; without <clock> it means utc
            clock.set("offset", "utc")
        _sub(clock, "timer", name="hypervclock").set("present", "yes")


def _tune_spice(root: Element) -> None:
    for graphics in root.findall("./devices/graphics[@type='spice']"):
        for attr in ("port", "autoport", "listen", "tlsPort", "defaultMode"):
            graphics.attrib.pop(attr, None)
        for listen in graphics.findall("listen"):
            remove(listen)
        add(graphics, "listen", {"type": "none"}, 0)  # no network, not even loopback
        for tag, attr, value in SPICE_SETTINGS:
            el = graphics.find(tag)
            if el is None:
                gl = graphics.find("gl")  # libvirt writes <gl> last
                el = add(graphics, tag, index=graphics.index(gl) if gl is not None else None)
            el.set(attr, value)


def tune(xml: str, spec: TuneSpec, plan: CpuPlan | None = None) -> str:
    """The domain XML tuned as the guide recommends; idempotent."""
    root = parse(xml)
    if spec.topology is not None:
        _tune_cpu(root, plan or plan_cpus(spec.topology, spec.vcpus, spec.pinning,
                                          spec.first_core))
    if spec.hyperv is not None:
        _tune_hyperv(root, spec.hyperv)
    if spec.spice:
        _tune_spice(root)
    return serialize(root)


VIRTIO_ISO_HINT = "virtio-win"
USB3_MODELS = ("qemu-xhci", "nec-xhci")
CHANNELS = (
    ("channel-vdagent", "com.redhat.spice.0", "spicevmc",
     "no spice-vdagent channel: copy and paste between host and guest will not work",
     "Add a spicevmc channel (virt-manager: Add Hardware, Channel, com.redhat.spice.0) and "
     "install the SPICE guest tools in Windows."),
    ("channel-webdav", "org.spice-space.webdav.0", "spiceport",
     "no spice-webdav channel: no folder sharing between host and guest",
     "Add a spiceport channel named org.spice-space.webdav.0 (virt-manager: Add Hardware, "
     "Channel)."),
    ("channel-guest-agent", "org.qemu.guest_agent.0", "unix",
     "no QEMU guest agent channel: libvirt cannot shut the guest down cleanly or sync its "
     "clock", "Add a unix channel named org.qemu.guest_agent.0 (virt-manager: Add Hardware, "
     "Channel) and install qemu-ga in the guest."),
)


def checks(xml: str) -> list[tuple[str, str, str]]:
    """(id, message, fix) for the guide's advice the XML does not follow yet."""
    root = parse(xml)
    out: list[tuple[str, str, str]] = []
    os_type = root.find("./os/type")
    machine = os_type.get("machine", "") if os_type is not None else ""
    if "q35" not in machine:
        out.append(("machine-q35", f"the machine type is {machine or 'the default'}, not Q35",
                    "Choose the Q35 chipset when creating the VM (virt-manager: Overview, "
                    "next to the firmware); changing it under an installed Windows needs a "
                    "reinstall of its drivers."))
    devices = root.find("devices")
    if devices is None:
        devices = root.makeelement("devices", {})
    disks = devices.findall("disk[@device='disk']")
    slow = [d for d in disks if (t := d.find("target")) is not None
            and t.get("bus") in ("ide", "sata")]
    if slow:
        out.append(("disk-bus", "the system disk is on "
                    f"{slow[0].find('target').get('bus')} (emulated, slow, no TRIM)",  # type: ignore[union-attr]
                    "Put it on SCSI with a virtio-scsi controller (virt-manager: Disk bus "
                    "SCSI) and install the driver from the virtio-win ISO's virtscsi/amd64."))
    scsi = [d for d in disks if (t := d.find("target")) is not None and t.get("bus") == "scsi"]
    if scsi and devices.find("controller[@type='scsi'][@model='virtio-scsi']") is None:
        out.append(("disk-virtio-scsi", "a disk is on SCSI but there is no virtio-scsi "
                    "controller", "Add a SCSI controller of model virtio-scsi."))
    fast = [d for d in disks if (t := d.find("target")) is not None
            and t.get("bus") in ("scsi", "virtio")]
    isos = [s.get("file", "") for s in devices.findall("disk[@device='cdrom']/source")]
    if fast and not any(VIRTIO_ISO_HINT in f for f in isos):
        out.append(("driver-iso", "no virtio-win driver ISO is attached: Windows does not "
                    "find a virtio or SCSI disk without its driver",
                    "Attach virtio-win.iso as a CD-ROM and load virtscsi/amd64 (or "
                    "viostor/amd64) during setup."))
    usb = devices.findall("controller[@type='usb']")
    if not any(c.get("model") in USB3_MODELS for c in usb):
        out.append(("usb3", "no USB 3 controller (the default is USB 2 or older)",
                    "Set the USB controller's model to qemu-xhci (virt-manager: Controller "
                    "USB, Model USB 3)."))
    spice = devices.find("graphics[@type='spice']") is not None
    for check_id, name, kind, message, fix in CHANNELS:
        if kind.startswith("spice") and not spice:
            continue
        if devices.find(f"channel/target[@name='{name}']") is None:
            out.append((check_id, message, fix))
    return out

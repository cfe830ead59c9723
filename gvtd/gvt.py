"""What gvtd knows about Intel GVT-g on top of the generic mdev ABI.

The type description format, the aperture arithmetic behind available_instances, and which
GPU generations have GVT-g at all. Nothing here touches sysfs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INTEL_VENDOR = 0x8086

_DESCRIPTION_FIELDS = {
    "low_gm_size": "low_gm_mb",
    "high_gm_size": "high_gm_mb",
    "fence": "fence",
    "resolution": "resolution",
    "weight": "weight",
}


@dataclass(frozen=True)
class GvtTypeInfo:
    """A GVT-g type's share of the GPU, parsed from its `description` file."""

    low_gm_mb: int
    high_gm_mb: int
    fence: int
    resolution: tuple[int, int]
    weight: int

    @property
    def resolution_text(self) -> str:
        return f"{self.resolution[0]}x{self.resolution[1]}"


def parse_description(text: str | None) -> GvtTypeInfo | None:
    """Parse `low_gm_size: 128MB\\nhigh_gm_size: 512MB\\nfence: 4\\nresolution: ...`.

    Returns None for any other driver's free-form description (or none at all), so a
    generic mdev parent is simply a parent without GVT-g details.
    """
    if not text:
        return None
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in _DESCRIPTION_FIELDS:
            values[_DESCRIPTION_FIELDS[key.strip()]] = value.strip()
    if len(values) != len(_DESCRIPTION_FIELDS):
        return None
    try:
        res = re.fullmatch(r"(\d+)x(\d+)", values["resolution"])
        if res is None:
            return None
        return GvtTypeInfo(
            low_gm_mb=int(values["low_gm_mb"].removesuffix("MB")),
            high_gm_mb=int(values["high_gm_mb"].removesuffix("MB")),
            fence=int(values["fence"]),
            resolution=(int(res.group(1)), int(res.group(2))),
            weight=int(values["weight"]),
        )
    except ValueError:
        return None


def fits(info: GvtTypeInfo, want: tuple[int, int]) -> bool:
    return info.resolution[0] >= want[0] and info.resolution[1] >= want[1]


def size_key(info: GvtTypeInfo) -> tuple[int, int, int]:
    """Order types from the smallest share of the GPU to the largest."""
    return (info.low_gm_mb, info.high_gm_mb, info.weight)


def describe_need(type_id: str, info: GvtTypeInfo) -> str:
    return (f"{type_id} needs {info.low_gm_mb} MB of aperture (low graphics memory), "
            f"{info.high_gm_mb} MB of high graphics memory and {info.fence} fence registers")


# GPU generations by the high byte of the PCI device id (Intel's numbering is grouped this
# way for these generations). Only the first six have GVT-g; Tiger Lake and newer have
# SR-IOV instead (gvtd.doctor_sriov).
_PLATFORMS: dict[int, tuple[str, bool]] = {
    0x16: ("Broadwell", True),
    0x19: ("Skylake", True),
    0x59: ("Kaby Lake", True),
    0x87: ("Kaby Lake", True),  # Amber Lake / Whiskey Lake variants 0x87C0, 0x87CA
    0x5A: ("Broxton/Apollo Lake", True),
    0x1A: ("Broxton/Apollo Lake", True),
    0x3E: ("Coffee Lake", True),
    0x9B: ("Comet Lake", True),
    0x31: ("Gemini Lake", False),
    0x8A: ("Ice Lake", False),
    0x4E: ("Jasper Lake", False),
    0x9A: ("Tiger Lake", False),
    0x4C: ("Rocket Lake", False),
    0x46: ("Alder Lake", False),
    0xA7: ("Raptor Lake", False),
    0x7D: ("Meteor Lake", False),  # and Arrow Lake, which shares its ids' high byte
    0xB0: ("Panther Lake", False),
}


def platform(vendor: int | None, device: int | None) -> tuple[str, bool]:
    """(generation name, has GVT-g) for a PCI vendor/device id; ("", False) if unknown."""
    if vendor != INTEL_VENDOR or device is None:
        return "", False
    return _PLATFORMS.get(device >> 8, ("", False))


# -- GVT-g's kernel messages ------------------------------------------------------------------
# GVT-g prints through gvt_err / gvt_vgpu_err (drivers/gpu/drm/i915/gvt/debug.h), pr_err at
# level 3: "gvt: vgpu %d: TEXT" names the vGPU by GVT-g's own id (the mdev's
# intel_vgpu/vgpu_id), "gvt: TEXT" does not. Entering failsafe mode (vgpu.c
# enter_failsafe_mode) prints its reason unprefixed, then "Now vgpu %d will enter failsafe
# mode.".

LOG_ERR = 3
_VGPU_RE = re.compile(r"gvt: vgpu (\d{1,4}): (.{1,512})", re.DOTALL)
_GVT_RE = re.compile(r"gvt: (?!vgpu \d)(.{1,512})", re.DOTALL)
_FAILSAFE_RE = re.compile(r"Now vgpu (\d{1,4}) will enter failsafe mode\.")
FAILSAFE_REASONS = {
    "Detected your guest driver doesn't support GVT-g.": "failsafe.guest-driver",
    "Graphics resource is not enough for the guest": "failsafe.resources",
    "GVT Internal error  for the guest": "failsafe.internal",
}
# vfio_iommu_type1's pin path: the locked-memory limit of QEMU's user is lower than the
# guest's memory (intel/gvt-linux#106); the VM fails to start or its vGPU to map.
# What GVT-g prints a few of while a guest driver probes the vGPU ("invalid untracked MMIO
# 0x... len 4"): normal at init, so no vGPU's health; doctor counts a storm of them.
_INIT_NOISE_RE = re.compile(r".*\b(invalid|untracked)\b.*\bMMIO\b.*", re.IGNORECASE | re.DOTALL)
_MEMLOCK_RE = re.compile(r"vfio_pin_pages_remote: RLIMIT_MEMLOCK \((\d+)\) exceeded")


@dataclass(frozen=True)
class KnownMessage:
    """A kernel message gvtd knows: what it means for the vGPU and what to do."""

    id: str
    health: str  # "degraded" or "failed"
    cause: str
    fix: str
    hang: bool = False  # known to precede a guest and often a host hang


KNOWN: dict[str, KnownMessage] = {
    "page-write": KnownMessage(
        "page-write", "failed",
        "GVT-g failed to shadow a guest page write: the guest's Intel driver reuses graphics "
        "memory without telling GVT-g (intel/gvt-linux#153, #188). It precedes a guest hang "
        "and often a host hang.",
        "Shut the VM down now (`gvt-client stop DOMAIN`; power off, not reboot) and start it "
        "again; set on_guest_fault = \"shutdown\" in gvtd.toml to have gvtd do it. Updating "
        "or rolling back the guest's Intel graphics driver may stop it.", hang=True),
    "failsafe.guest-driver": KnownMessage(
        "failsafe.guest-driver", "failed",
        "The vGPU entered failsafe mode: the guest's graphics driver does not support GVT-g "
        "(unsupported or too old), so the vGPU stops rendering.",
        "Install an Intel graphics driver with GVT-g support in the guest (the guide's "
        "15.45 or a newer one for your generation), then power the VM off and start it."),
    "failsafe.resources": KnownMessage(
        "failsafe.resources", "failed",
        "The vGPU entered failsafe mode: GVT-g's graphics resources (aperture) are not "
        "enough for the guest.",
        "Give the vGPU a larger type (e.g. i915-GVTg_V5_4 instead of _8), or raise the "
        "aperture / DVMT pre-allocated memory in the firmware setup."),
    "failsafe.internal": KnownMessage(
        "failsafe.internal", "failed",
        "The vGPU entered failsafe mode after a GVT-g internal error for the guest.",
        "Power the VM off and start it again; if it repeats, report the kernel log "
        "(journalctl -k | grep gvt) to intel/gvt-linux."),
    "failsafe": KnownMessage(
        "failsafe", "failed",
        "The vGPU entered failsafe mode (the kernel log before it may say why): it stops "
        "rendering for the guest.",
        "See journalctl -k around that time; power the VM off and start it again."),
    "memlock": KnownMessage(
        "memlock", "failed",
        "VFIO could not pin the guest's memory: the locked-memory limit (RLIMIT_MEMLOCK) "
        "of QEMU's user is below the guest's memory (intel/gvt-linux#106).",
        "Raise the limit: in the domain XML <memtune><hard_limit> above the guest's memory, "
        "or LimitMEMLOCK=infinity for libvirtd (systemctl edit libvirtd); gvt-client doctor "
        "shows the limit."),
    "unknown": KnownMessage(
        "unknown", "degraded",
        "GVT-g reported an error for this vGPU that gvtd does not know.",
        "See the kernel log (journalctl -k | grep gvt); if the guest misbehaves, power it "
        "off and start it again."),
}


@dataclass(frozen=True)
class GvtMessage:
    """A kernel record that is GVT-g's (or VFIO's about a vGPU), classified."""

    known: KnownMessage
    text: str  # as the kernel printed it
    vgpu_id: int | None  # GVT-g's id, when the record names one


def classify(text: str, level: int, reason: str = "") -> GvtMessage | None:
    """What a kernel record (already known to come from the kernel, facility 0) says about
    GVT-g; None for any other record. Only error-level records count: a text a user
    controls that the kernel prints at a lower level (a process name before "segfault")
    cannot pass. `reason` is the unprefixed failsafe reason printed just before."""
    if level > LOG_ERR:
        m = _MEMLOCK_RE.match(text) if level <= 4 else None  # pr_warn
        return GvtMessage(KNOWN["memlock"], text, None) if m else None
    m = _FAILSAFE_RE.fullmatch(text)
    if m:
        return GvtMessage(KNOWN[FAILSAFE_REASONS.get(reason, "failsafe")],
                          f"{reason} {text}".strip(), int(m.group(1)))
    m = _VGPU_RE.fullmatch(text)
    if m and _INIT_NOISE_RE.fullmatch(m.group(2)):
        return None
    if m:
        return GvtMessage(_known(m.group(2)), text, int(m.group(1)))
    m = _GVT_RE.fullmatch(text)
    if m:
        return GvtMessage(_known(m.group(1)), text, None)
    return None


class Classifier:
    """classify() over a stream of the kernel's records, pairing each failsafe entry with
    the reason printed just before it (one record of memory)."""

    def __init__(self) -> None:
        self._reason = ""

    def feed(self, text: str, level: int) -> GvtMessage | None:
        if level <= LOG_ERR and text in FAILSAFE_REASONS:
            self._reason = text
            return None
        reason, self._reason = self._reason, ""
        return classify(text, level, reason)


def _known(text: str) -> KnownMessage:
    if text.startswith("guest page write error"):
        return KNOWN["page-write"]
    return KNOWN["unknown"]

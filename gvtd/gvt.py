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
# way for these generations). Only the first six have GVT-g.
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
    0x7D: ("Meteor Lake", False),
}


def platform(vendor: int | None, device: int | None) -> tuple[str, bool]:
    """(generation name, has GVT-g) for a PCI vendor/device id; ("", False) if unknown."""
    if vendor != INTEL_VENDOR or device is None:
        return "", False
    return _PLATFORMS.get(device >> 8, ("", False))

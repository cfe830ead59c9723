"""Whether Windows 11 accepts the host's CPU: the guest sees it (host-passthrough), and
Windows 11 Setup refuses Intel Core before the 8th generation.

Read from the host's /proc/cpuinfo (under the root doctor reads, so that a simulated host
has its own CPU). Intel family 6 only: the models below are the generations GVT-g hosts have
that Microsoft's list leaves out; 142 and 158 are shared by 7th and 8th generation parts,
told apart by stepping (Kaby Lake-R is 142 stepping 10) and, for Amber Lake (142 stepping
9, like Kaby Lake Y/U), by the model name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# family 6 model -> generation, for models that are never Windows 11 CPUs
UNSUPPORTED = {60: "Haswell", 63: "Haswell", 69: "Haswell", 70: "Haswell",
               61: "Broadwell", 71: "Broadwell", 79: "Broadwell", 86: "Broadwell",
               78: "Skylake", 94: "Skylake", 85: "Skylake",
               92: "Apollo Lake", 122: "Gemini Lake"}
# models shared by 7th generation (Kaby Lake) and later parts: the first supported stepping
SHARED = {142: 10, 158: 10}
EIGHTH_GEN_NAME = re.compile(r"\b[im][3579]-8\d{3}|\bm3-8")


@dataclass(frozen=True)
class Cpu:
    vendor: str
    family: int
    model: int
    stepping: int
    name: str


def read(procfs: Path) -> Cpu | None:
    """The first CPU of procfs/cpuinfo; None when it cannot be read."""
    try:
        text = (procfs / "cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        return Cpu(fields.get("vendor_id", ""), int(fields["cpu family"]), int(fields["model"]),
                   int(fields.get("stepping", "0")), fields.get("model name", ""))
    except (KeyError, ValueError):
        return None


def refusal(cpu: Cpu | None) -> str | None:
    """Why Windows 11 Setup will refuse this CPU, with what the user can do; None if it
    accepts it (or gvtd cannot tell: then Setup decides)."""
    if cpu is None or cpu.vendor != "GenuineIntel" or cpu.family != 6:
        return None
    generation = UNSUPPORTED.get(cpu.model)
    if generation is None and cpu.model in SHARED and cpu.stepping < SHARED[cpu.model] \
            and not EIGHTH_GEN_NAME.search(cpu.name):
        generation = "Kaby Lake (7th generation)"
    if generation is None:
        return None
    return (f"This host's CPU ({cpu.name or 'Intel'}, family 6 model {cpu.model} stepping "
            f"{cpu.stepping}: {generation}) is not one Windows 11 accepts (Intel Core of the "
            "8th generation and later: Kaby Lake-R, Coffee Lake, Whiskey Lake, Amber Lake, "
            "Comet Lake), and the VM sees the host's CPU, so Windows 11 Setup will refuse to "
            "install. Use --windows 10, or, at your own risk, --allow-unsupported-cpu and "
            "skip Setup's check yourself (Shift+F10 in Setup, regedit, key "
            "HKLM\\SYSTEM\\Setup\\LabConfig, DWORD BypassCPUCheck = 1).")

"""The host's CPU cores and their SMT siblings, read from sysfs, for vCPU pinning.

A guest core's two threads belong on one host core's two hyperthreads (the guide's
cputune): which logical CPUs share a core is `devices/system/cpu/cpuN/topology/
thread_siblings_list`, and it is not "N and N+1" (a Kaby Lake laptop pairs cpu0 with cpu4).
The sysfs root is a parameter so tests and the simulated host bring their own trees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gvtd.errors import Failed
from gvtd.mdev import list_dir, read_attr

CPU_DIR = Path("devices/system/cpu")
_CPU_RE = re.compile(r"cpu(\d+)")


@dataclass(frozen=True)
class Topology:
    """Each core's logical CPUs (sorted), cores in order of their first CPU."""

    cores: tuple[tuple[int, ...], ...]

    @property
    def smt(self) -> bool:
        """Every core has two hyperthreads (the only SMT the supported Intel CPUs have)."""
        return bool(self.cores) and all(len(c) == 2 for c in self.cores)

    @property
    def threads(self) -> int:
        return 2 if self.smt else 1

    @property
    def cpus(self) -> int:
        return sum(len(c) for c in self.cores)

    def usable(self, first_core: bool) -> tuple[tuple[int, ...], ...]:
        """The cores a guest may be pinned to: all but CPU 0's unless asked (the guide
        leaves the first core to the host). Without SMT each CPU is its own core."""
        cores = self.cores if self.smt else tuple((c,) for core in self.cores for c in core)
        return cores if first_core else tuple(c for c in cores if 0 not in c)


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """The kernel's cpu list format: `0,4`, `0-1`, `0-3,8-11`."""
    out: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return tuple(sorted(out))


def read(sysfs: Path) -> Topology:
    """The online CPUs' cores; Failed with what to do when sysfs does not say."""
    base = sysfs / CPU_DIR
    cores: set[tuple[int, ...]] = set()
    for name in list_dir(base):
        m = _CPU_RE.fullmatch(name)
        if m is None or (read_attr(base / name / "online") or "1").strip() == "0":
            continue
        siblings = read_attr(base / name / "topology" / "thread_siblings_list")
        try:
            core = parse_cpu_list(siblings) if siblings is not None else ()
        except ValueError:
            core = ()
        cores.add(core or (int(m.group(1)),))
    if not cores:
        raise Failed(f"Cannot read the host's CPU topology ({base}/cpu*/topology is missing "
                     "or unreadable); tune without the CPU part (--no-cpu).")
    return Topology(tuple(sorted(cores)))

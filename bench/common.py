"""What every benchmark shares: figures with their baselines, the table, the machine's
description, and the simulated host's plumbing.

A figure is a list of samples plus, where one exists, the baseline measured the same way in
the same run; the table shows the ratio to it, so that a slower machine moves both.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import harness  # noqa: E402

from gvtd import names  # noqa: E402


class Client(harness.Client):
    """The tests' client, as the process that runs the benchmarks: they measure gvtd on a
    bus of their own without polkit, as they always have, not the gate (tests/ does that)."""

    def __init__(self, address: str) -> None:
        super().__init__(address, uid=os.geteuid())


def compile_bytecode() -> None:
    """Measure gvtd as installed: packages ship its modules byte-compiled (dh_python3's
    py3compile, the RPM's and Arch's builds), while a source tree run with
    PYTHONDONTWRITEBYTECODE compiles every module of gvtd again at each start."""
    import compileall

    compileall.compile_dir(ROOT / "gvtd", quiet=1)


compile_bytecode()

SIM = dict(dest=names.SIMULATOR_BUS_NAME, path=names.SIMULATOR_PATH, iface=names.SIMULATOR_IFACE)
TAIL_MIN = 20  # fewer samples than this: p95/p99 say nothing, the table shows "-"


@dataclass
class Figure:
    """One measured quantity. `higher` is true for rates (calls/s), where more is better."""

    name: str
    samples: list[float]
    unit: str = "ms"
    baseline: "Figure | None" = None
    goal: str = ""
    met: bool | None = None  # None: no goal, or not comparable
    higher: bool = False
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def pct(self, p: float) -> float | None:
        if len(self.samples) < TAIL_MIN:
            return None
        s = sorted(self.samples)
        return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline.median:
            return None
        return self.median / self.baseline.median


@dataclass
class Section:
    """The figures of one benchmark plus what it found besides numbers (agreement, profiles)."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, fig: Figure) -> Figure:
        self.figures.append(fig)
        return fig


def goal_max(fig: Figure, limit: float, stat: str = "median") -> Figure:
    """Mark `fig` against an upper bound on its median (or p99, p50)."""
    value = fig.pct(99) if stat == "p99" else fig.median
    fig.goal = f"{stat} <= {limit:g} {fig.unit}"
    fig.met = None if value is None else value <= limit
    return fig


def goal_min(fig: Figure, limit: float) -> Figure:
    fig.goal = f"median >= {limit:g} {fig.unit}"
    fig.met = fig.median >= limit
    return fig


def _num(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "calls/s" or abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


HEADER = ["figure", "unit", "n", "median", "p95", "p99", "spread (min-max)", "baseline (median)",
          "ratio", "goal"]


def rows(fig: Figure) -> list[str]:
    """One table row for a figure."""
    spread = f"{_num(min(fig.samples), fig.unit)}-{_num(max(fig.samples), fig.unit)}"
    base = "-" if fig.baseline is None else \
        f"{fig.baseline.name}: {_num(fig.baseline.median, fig.baseline.unit)}"
    r = fig.ratio
    ratio = "-" if r is None else f"{r:.0f}x" if r >= 10 else f"{r:.1f}x" if r >= 1 \
        else f"{r:.3f}x"
    goal = fig.goal + ("" if fig.met is None else (" (met)" if fig.met else " (MISSED)"))
    return [fig.name, fig.unit, str(len(fig.samples)), _num(fig.median, fig.unit),
            _num(fig.pct(95), fig.unit), _num(fig.pct(99), fig.unit), spread, base, ratio, goal]


def text_table(sections: list[Section]) -> str:
    """The table for a terminal."""
    table = [HEADER] + [rows(f) for s in sections for f in s.figures]
    widths = [min(58, max(len(r[i]) for r in table)) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def markdown_table(figures: list[Figure]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for f in figures:
        out.append("| " + " | ".join(c.replace("|", "/") for c in rows(f)) + " |")
    return "\n".join(out)


def _first(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].strip() if out else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "unknown"


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    mem_kb = _first("/proc/meminfo", "MemTotal").split()[0]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "gvtd"],
                           capture_output=True, text=True).stdout.strip()
    if commit and dirty:
        commit += " plus uncommitted changes to gvtd/"
    return {
        "CPU": _first("/proc/cpuinfo", "model name"),
        "cores (usable)": str(len(os.sched_getaffinity(0))),
        "memory": f"{int(mem_kb) / 1024 / 1024:.1f} GiB" if mem_kb.isdigit() else "unknown",
        "kernel": platform.release(),
        "OS": _os_name(),
        "Python": platform.python_version(),
        "dbus-daemon": _version(["dbus-daemon", "--version"]),
        "mdevctl": _version(["mdevctl", "--version"]),
        "systemd-tmpfiles": _version(["systemd-tmpfiles", "--version"]),
        "driverctl": _version(["dpkg-query", "-W", "-f=${Version}", "driverctl"]),
        "gvtd commit": commit or "unknown",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


# -- the simulated host ---------------------------------------------------------------------

def sim_props(client: Client) -> dict[str, Any]:
    return client.props(names.SIMULATOR_PATH, names.SIMULATOR_IFACE, dest=names.SIMULATOR_BUS_NAME)


def wall_ms(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time of one command, from fork to exit, output discarded."""
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - t) * 1000


def python_start_ms() -> float:
    """The floor of any Python command: an interpreter that does nothing."""
    return wall_ms([sys.executable, "-c", "pass"])


def kernel_split(sec: Section, starts: list[tuple[float, float]], what: str,
                 baseline: Figure | None = None) -> None:
    """Starts given as (StartupMs, StartupKernelMs): the emulated kernel's share of them
    (its answers to gvtd's creates), and the rest, gvtd's own part."""
    sec.add(Figure(f"  ... of which the emulated kernel's {what}", [k for _, k in starts]))
    sec.add(Figure("  ... less those: gvtd's own part", [s - k for s, k in starts],
                   baseline=baseline))


def write_definitions(config_dir: Path, defs: list[dict[str, str]]) -> None:
    """vgpus.d/NAME.toml files as a person would write them (Reload reads them): far quicker
    than hundreds of Define calls, each a D-Bus round trip, a file and a create."""
    d = config_dir / "vgpus.d"
    d.mkdir(parents=True, exist_ok=True)
    for item in defs:
        body = "".join(f'{k} = "{v}"\n' for k, v in item.items() if k != "name")
        (d / f"{item['name']}.toml").write_text(body)


def clear_definitions(config_dir: Path) -> None:
    for f in (config_dir / "vgpus.d").glob("*.toml"):
        f.unlink()


def settle(client: Client, want: Callable[[dict[str, dict[str, Any]]], bool],
           timeout: float = 120.0, quiet: float = 0.5) -> dict[str, dict[str, Any]]:
    """Wait until gvtd's vGPUs satisfy `want` (gvtd follows the kernel asynchronously).

    The view is read only once gvtd has sent no signal for `quiet` seconds: reading it
    during a burst would compete with gvtd for its event loop while it is following the
    kernel, and slow down what is being waited for. Returns the last view either way."""
    deadline = time.monotonic() + timeout
    while True:
        view = client.vgpus()
        if want(view) or time.monotonic() > deadline:
            return view
        while time.monotonic() < deadline:
            client.signals.clear()
            try:
                client.wait_for(lambda m: True, timeout=quiet)
            except TimeoutError:
                break  # quiet: look again

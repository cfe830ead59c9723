"""PF driver bound -> N VFs bound to vfio-pci: gvtd against what users do today, in one run.

    .venv/bin/python bench/sriov.py [--rounds N] [--quick]

The way without gvtd: a tmpfiles.d line writes the VF count when systemd-tmpfiles runs,
and driverctl moves each VF to vfio-pci:

    w /sys/bus/pci/devices/0000:00:02.0/sriov_numvfs - - - - 7     (systemd-tmpfiles --create)
    driverctl --nosave set-override 0000:00:02.N vfio-pci          (for each VF)

Both run over the emulated Alder Lake host (profile alderlake-sriov: the i915 SR-IOV module,
7 VFs at 0000:00:02.1-7) under umockdev's preload, the tools in a mount namespace where the
emulated tree is /sys (bench/mdevns.py says why). A round unbinds the PF's driver (its VFs go
with it) and binds it again, as a driver reload or a boot does; the figure is the time from
the PF's `bind` uevent to the last VF's `bind` to vfio-pci, both read from the emulated
kernel's own log of the uevents it sent, so that both ways are timed by the same clock. The
tools are started the moment the PF's bind returns: the best a boot order can do for them. A
uevent listener on the emulated host (tests/sim/monitor.py) says which driver each VF was
bound to on the way, and the benchmark waits on it (and on gvtd's signals), never on sleeps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (SIM, Client, Figure, Section, settle, sim_props, text_table,  # noqa: E402
                    write_definitions)
from mdevns import SysNamespace  # noqa: E402
from sim.conftest import HostProc, Lines  # noqa: E402  (tests/sim: the emulated host's child)

from gvtd.sim.session import DBusDaemon, SimulatedHost, roomy_uevent_queue  # noqa: E402
from gvtd.sim.testbed import PRELOAD  # noqa: E402

PROFILE = "alderlake-sriov"
PF = "0000:00:02.0"
PF_PATH = "/sys/devices/pci0000:00/" + PF
N_VFS = 7
MONITOR = Path(__file__).resolve().parent.parent / "tests" / "sim" / "monitor.py"

# modprobe on the emulated machine: driverctl loads the driver it is given unless /sys/module
# has it under that spelling ("vfio-pci"; the kernel's is vfio_pci, so on a real host it
# always runs modprobe). A module counts as loaded when the emulated /sys/module has it; the
# real modprobe would load modules into the kernel of the machine running the benchmark.
MODPROBE = """#!/bin/sh
for m; do :; done
[ -d "/sys/module/$(echo "$m" | tr - _)" ]
"""


def vf_addresses(n: int) -> list[str]:
    """The profile's VFs: routing-id offset 1, stride 1 from the PF at 00:02.0."""
    return [f"0000:00:02.{i}" for i in range(1, n + 1)]


def vf_path(address: str) -> str:
    return "/sys/devices/pci0000:00/" + address


@dataclass
class Round:
    """One PF bind: how long until every VF was on vfio-pci, and how many VFs a host
    driver (the PF's own, with autoprobe on) had bound on the way."""

    counted_ms: float  # to the first VF's add: the count is written
    ms: float  # to the last VF's bind to vfio-pci
    host_driver_vfs: int
    tools_ms: tuple[float, float] = (0.0, 0.0)  # systemd-tmpfiles, all driverctl runs


class VfWatch:
    """A uevent listener on the emulated host, as any udev client there gets the events:
    tests/sim/monitor.py under the testbed's preload, in a network namespace of its own so
    that its datagram queue holds a burst (gvtd.sim.session.roomy_uevent_queue)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(roomy_uevent_queue([sys.executable, str(MONITOR)]),
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.lines = Lines(self.proc)
        if self.lines.next() != "ready":
            raise RuntimeError("the uevent listener did not start")

    def until_on_vfio(self, vfs: Iterable[str], timeout: float = 60.0) -> list[dict[str, Any]]:
        """The events up to the one that leaves the last of `vfs` bound to vfio-pci."""
        want = {"/devices/pci0000:00/" + a for a in vfs}
        events, bound = [], set()
        deadline = time.monotonic() + timeout
        while bound != want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"VFs still not on vfio-pci after {timeout:.0f} s: "
                                   f"{sorted(want - bound)}")
            e = json.loads(self.lines.next(left))
            events.append(e)
            if e["devpath"] in want and e["action"] == "bind":
                if e["props"].get("DRIVER") == "vfio-pci":
                    bound.add(e["devpath"])
            elif e["devpath"] in want and e["action"] in ("unbind", "remove"):
                bound.discard(e["devpath"])
        return events

    def until_gone(self, vfs: Iterable[str], timeout: float = 60.0) -> None:
        """Wait for the `remove` of each of `vfs` and then the PF's `unbind`."""
        want = {"/devices/pci0000:00/" + a for a in vfs} | {PF_PATH.removeprefix("/sys")}
        deadline = time.monotonic() + timeout
        while want:
            e = json.loads(self.lines.next(max(0.0, deadline - time.monotonic())))
            if e["action"] in ("remove", "unbind"):
                want.discard(e["devpath"])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def host_driver_vfs(events: list[dict[str, Any]], vfs: Iterable[str]) -> int:
    """How many of `vfs` some driver other than vfio-pci had bound in `events`."""
    paths = {"/devices/pci0000:00/" + a for a in vfs}
    return len({e["devpath"] for e in events if e["devpath"] in paths and e["action"] == "bind"
                and e["props"].get("DRIVER") != "vfio-pci"})


def timeline(sent: list[tuple[float, str, str]], since: float,
             vfs: Iterable[str]) -> tuple[float, float]:
    """From the emulated kernel's log of sent uevents (CLOCK_MONOTONIC s, action, path): ms
    from the PF's first `bind` after `since` to the first VF's `add` (the count written)
    and to the last VF `bind` after it."""
    t0 = next(t for t, action, path in sent if t >= since and action == "bind"
              and path == PF_PATH)
    paths = {vf_path(a) for a in vfs}
    added = min(t for t, action, path in sent if t >= t0 and action == "add" and path in paths)
    bound = max(t for t, action, path in sent if t >= t0 and action == "bind" and path in paths)
    return (added - t0) * 1000, (bound - t0) * 1000


# -- today's way: systemd-tmpfiles plus driverctl ------------------------------------------------

def too_early(host: HostProc, ns: SysNamespace, conf: Path, sec: Section) -> None:
    """A boot on which systemd-tmpfiles runs before the PF's driver has probed (the module
    is loaded by udev, later): what the tmpfiles.d line does then."""
    host.call("unbind_driver", PF)
    run = ns.run(["systemd-tmpfiles", "--create", str(conf)])[0]
    host.call("bind_driver", PF, "i915")
    vfs = [d for d, _, _ in host.call("pci_devices") if d != PF]
    said = run.stderr.strip().splitlines()
    sec.notes.append(f"tmpfiles.d before the PF's driver bound (a boot where systemd-tmpfiles "
                     f"runs first): exit status {run.returncode}, "
                     f"{repr(said[0]) if said else 'nothing on stderr'}; once the driver "
                     f"bound, {len(vfs)} VFs, and nothing writes the count again")


def baseline(rounds: int, n: int, work: Path, sec: Section) -> list[Round]:
    """tmpfiles.d + driverctl on an emulated host with no gvtd on it."""
    vfs = vf_addresses(n)
    conf = work / "sriov.conf"
    conf.write_text(f"w /sys/bus/pci/devices/{PF}/sriov_numvfs - - - - {n}\n")
    stub = work / "sbin"
    stub.mkdir()
    (stub / "modprobe").write_text(MODPROBE)
    (stub / "modprobe").chmod(0o755)
    host = HostProc(PROFILE)
    ns = watch = None
    out = []
    try:
        Path(host.sys("module/vfio_pci")).mkdir(parents=True, exist_ok=True)
        ns = SysNamespace(host.root + "/sys", [
            ["-t", "overlay", "overlay", "-o", f"lowerdir={stub}:/usr/sbin", "/usr/sbin"]],
            env=host.child_env())
        watch = VfWatch(host.child_env())
        too_early(host, ns, conf, sec)
        boot = [["systemd-tmpfiles", "--create", str(conf)]] + \
            [["driverctl", "--nosave", "set-override", vf, "vfio-pci"] for vf in vfs]
        for r in range(rounds):
            if r:
                host.call("unbind_driver", PF)  # the VFs go with the PF's driver
                watch.until_gone(vfs)
            since = time.monotonic()
            if r:
                host.call("bind_driver", PF, "i915")
            runs = ns.run(*boot)
            bad = [x for x in runs if x.returncode]
            if bad:
                raise RuntimeError(f"{' '.join(bad[0].argv)} failed ({bad[0].returncode}): "
                                   f"{bad[0].stderr.strip()}")
            events = watch.until_on_vfio(vfs)
            if not r:
                continue  # the first round only brings the host to the state a round ends in
            out.append(Round(*timeline(host.call("uevents"), since, vfs),
                             host_driver_vfs(events, vfs),
                             (runs[0].ms, sum(x.ms for x in runs[1:]))))
    finally:
        for x in (watch, ns):
            if x is not None:
                x.close()
        host.close()
    return out


# -- gvtd -------------------------------------------------------------------------------

def on_vfio(n: int) -> Callable[[dict[str, dict[str, Any]]], bool]:
    return lambda view: sum(v["State"] == "active" for v in view.values()) == n


def with_gvtd(rounds: int, n: int, sec: Section) -> list[Round]:
    """gvtd with n VF definitions (start auto) on the PF: it follows the PF's driver."""
    vfs = vf_addresses(n)
    bus = DBusDaemon()
    host = SimulatedHost(bus.address, profile=PROFILE, stderr=subprocess.DEVNULL)
    client = Client(bus.address)
    watch = None
    out = []
    try:
        props = sim_props(client)
        watch = VfWatch(dict(os.environ, LD_PRELOAD=f"{PRELOAD}.so.0",
                             UMOCKDEV_DIR=props["Root"]))
        write_definitions(Path(props["ConfigDir"]), [
            dict(name=f"vf{i}", type="vf", parent=PF, start="auto") for i in range(n)])
        client.call("Reload")
        watch.until_on_vfio(vfs)
        for _ in range(rounds):
            client.call("UnbindDriver", "s", [PF], **SIM)  # the VFs go with the PF's driver
            watch.until_gone(vfs)
            settle(client, lambda view: not any(v["State"] == "active" for v in view.values()))
            since = time.monotonic()
            client.call("BindDriver", "ss", [PF, "i915"], **SIM)
            events = watch.until_on_vfio(vfs)
            out.append(Round(*timeline(client.call("UeventLog", **SIM)[0], since, vfs),
                             host_driver_vfs(events, vfs)))
        view = settle(client, on_vfio(n))
        shown = sorted(v.get("Address", "") for v in view.values() if v["State"] == "active")
        if shown != vfs:
            sec.notes.append(f"UNEXPECTED: gvtd shows {shown} active after the last round, "
                             f"the kernel has {vfs} on vfio-pci")
        else:
            sec.notes.append(f"agree: gvtd shows its {n} VF vGPUs active at {vfs[0]}-"
                             f"{vfs[-1].rsplit('.', 1)[1]}, the VFs the kernel has on vfio-pci")
    finally:
        if watch is not None:
            watch.close()
        client.close()
        host.stop()
        bus.stop()
    return out


def counted_figure(sec: Section, name: str, runs: list[Round], baseline: Figure | None = None
                   ) -> Figure:
    return sec.add(Figure(f"  ... {name}: PF driver bound -> first VF added (count written)",
                          [r.counted_ms for r in runs], baseline=baseline))


def host_driver_figure(sec: Section, name: str, runs: list[Round]) -> None:
    sec.add(Figure(f"  ... {name}: VFs bound to a host driver on the way",
                   [float(r.host_driver_vfs) for r in runs], unit="VFs"))


def touched(name: str, runs: list[Round], n: int) -> str:
    rounds = sum(r.host_driver_vfs > 0 for r in runs)
    return (f"{name}: a host driver bound VFs in {rounds} of {len(runs)} rounds "
            f"({max((r.host_driver_vfs for r in runs), default=0)} of {n} at most)")


def measure(rounds: int = 15, n: int = N_VFS, gvtd: bool = True) -> Section:
    """Both ways, baseline first; `gvtd` false measures the baseline alone."""
    sec = Section(f"SR-IOV: PF driver bound -> {n} VFs on vfio-pci")
    with tempfile.TemporaryDirectory(prefix="gvtd-bench-sriov-") as tmp:
        base = baseline(rounds + 1, n, Path(tmp), sec)
    what = f"PF driver bound -> {n} VFs on vfio-pci"
    b = sec.add(Figure(f"tmpfiles.d + driverctl: {what}", [r.ms for r in base]))
    b_counted = counted_figure(sec, "tmpfiles.d + driverctl", base)
    sec.add(Figure(f"  ... systemd-tmpfiles --create: {n} VFs made (fork to exit)",
                   [r.tools_ms[0] for r in base]))
    sec.add(Figure(f"  ... driverctl --nosave set-override x{n} (sum of runs)",
                   [r.tools_ms[1] for r in base]))
    host_driver_figure(sec, "tmpfiles.d + driverctl", base)
    sec.notes.append(touched("tmpfiles.d + driverctl (sriov_drivers_autoprobe 1)", base, n))
    if gvtd:
        own = with_gvtd(rounds, n, sec)
        sec.add(Figure(f"gvtd: {what}", [r.ms for r in own], baseline=b))
        counted_figure(sec, "gvtd", own, b_counted)
        host_driver_figure(sec, "gvtd", own)
        sec.notes.append(touched("gvtd (sriov_drivers_autoprobe 0 before sriov_numvfs)", own, n))
    return sec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="2 rounds")
    ap.add_argument("--baseline-only", action="store_true", help="tmpfiles.d + driverctl alone")
    args = ap.parse_args()
    sec = measure(2 if args.quick else args.rounds, gvtd=not args.baseline_only)
    print(text_table([sec]))
    print("\n".join(sec.notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

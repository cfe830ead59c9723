"""Where gvtd's time goes where a goal is missed: its start with 8 definitions and
GetManagedObjects under 4 clients, profiled with cProfile in the production daemon.

    .venv/bin/python bench/profiles.py [--quick]

A second gvtd, started under cProfile on its own private bus, runs over the simulator's
emulated kernel (the same testbed, through umockdev's preload, as the simulator starts its
own); the simulator's gvtd has no definitions and only watches. The file system calls are
summed apart from the rest, since through FUSE each costs about a millisecond that a real
sysfs does not.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SIM, Client, Figure, Section, settle, sim_props, write_definitions  # noqa: E402
from dbus_calls import burst  # noqa: E402

from gvtd.sim.session import DBusDaemon, NotifySocket, SimulatedHost  # noqa: E402

# the calls that reach the (emulated) kernel: their own time is FUSE plus the emulator
FILE_CALLS = ("posix.listdir", "io.open", "posix.open", "posix.write", "posix.readlink",
              "posix.lstat", "posix.stat", "posix.scandir", "'read' of '_io")


def _is_file_call(func: str) -> bool:
    return any(c in func for c in FILE_CALLS)


def summarize(path: Path, top: int, whole_ms: float | None = None) -> list[str]:
    """Lines for the report: total, file system share, then the costliest functions."""
    st = pstats.Stats(str(path))
    stats = st.stats  # type: ignore[attr-defined]
    total = st.total_tt  # type: ignore[attr-defined]
    files = sum(v[2] for k, v in stats.items() if _is_file_call(k[2]))
    idle = sum(v[2] for k, v in stats.items() if "poll" in k[2] or "select" in k[2])
    out = [f"{total * 1000:.0f} ms profiled in all, {idle * 1000:.0f} ms of it waiting in "
           f"epoll/select, {files * 1000:.0f} ms in file system calls (the emulated sysfs: "
           "FUSE and the emulator behind it)"]
    busy = sorted(((v[2], k) for k, v in stats.items()
                   if not _is_file_call(k[2]) and "poll" not in k[2] and "select" not in k[2]),
                  reverse=True)[:top]
    for tt, (file, line, func) in busy:
        where = func if file == "~" else f"{func} ({Path(file).name}:{line})"
        out.append(f"  {tt * 1000:7.1f} ms own time  {where}")
    return out


class ProfiledDaemon:
    """gvtd under cProfile on `bus_address`, seeing the simulator's testbed as /sys."""

    def __init__(self, root: str, sim_config: Path, work: Path, bus_address: str,
                 defs: list[dict[str, str]]) -> None:
        self.config = work / "etc"
        self.config.mkdir(parents=True)
        shutil.copy(sim_config / "gvtd.toml", self.config / "gvtd.toml")
        write_definitions(self.config, defs)
        self.out = work / "gvtd.prof"
        self.notify = NotifySocket(work)
        env = dict(os.environ, UMOCKDEV_DIR=root, DBUS_SESSION_BUS_ADDRESS=bus_address,
                   NOTIFY_SOCKET=self.notify.path)
        env.pop("JOURNAL_STREAM", None)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            ["umockdev-wrapper", sys.executable, "-m", "cProfile", "-o", str(self.out),
             "-m", "gvtd.daemon", "--session", "--config-dir", str(self.config),
             "--state-dir", str(work / "state"), "--runtime-dir", str(work / "run"),
             "--log-level", "warning"], env=env, stderr=subprocess.DEVNULL)
        self.notify.wait("READY=1")
        self.ready_ms = (time.monotonic() - self.started) * 1000

    def stop(self) -> Path:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.notify.close()
        return self.out


def measure(quick: bool = False) -> Section:
    sec = Section("Profiles")
    work = Path(tempfile.mkdtemp(prefix="gvtd-bench-profile-"))
    bus = DBusDaemon()
    host = SimulatedHost(bus.address, profile="multi:n=4,ports=16", stderr=subprocess.DEVNULL)
    client = Client(bus.address)
    bus2 = DBusDaemon()
    try:
        props = sim_props(client)
        root, sim_config = props["Root"], Path(props["ConfigDir"])

        # 1. start with 8 definitions (2 GVT-g, 6 mtty): the kernel has none of them
        defs = [dict(name=f"vm{i}", uuid=str(uuidlib.uuid4()),
                     parent="0000:00:02.0" if i < 2 else f"mtty{i % 2}",
                     type="i915-GVTg_V5_8" if i < 2 else "mtty-1", start="auto")
                for i in range(8)]
        d = ProfiledDaemon(root, sim_config, work / "start", bus2.address, defs)
        ready = d.ready_ms
        prof = d.stop()
        sec.notes.append(f"gvtd start with 8 definitions under cProfile: READY=1 after "
                         f"{ready:.0f} ms (profiling slows it); whole run to exit:")
        sec.notes += summarize(prof, 3 if quick else 8)
        for u in (x["uuid"] for x in defs):  # the kernel forgets them, as after a reboot
            client.call("RemoveMdev", "s", [u], **SIM)
        settle(client, lambda v: not v)

        # 2. GetManagedObjects from 4 clients with 64 vGPUs
        defs = [dict(name=f"vm{i:02}", uuid=str(uuidlib.uuid4()), parent=f"mtty{i // 16}",
                     type="mtty-1", start="auto") for i in range(64)]
        d = ProfiledDaemon(root, sim_config, work / "gmo", bus2.address, defs)
        rate, lat = burst(bus2.address, "GetManagedObjects", 0.5 if quick else 3.0)
        prof = d.stop()
        sec.add(Figure("GetManagedObjects (64 vGPUs), 4 clients, under cProfile: rate",
                       [rate], unit="calls/s", higher=True))
        sec.notes.append("gvtd serving GetManagedObjects (64 vGPUs) to 4 clients under "
                         "cProfile, start and exit included:")
        sec.notes += summarize(prof, 4 if quick else 12)
        # import cost, without the profiler: the floor of every start and every gvt-client
        for mod in ("gvtd.daemon", "gvtd.client.main"):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {mod}"], check=True)
            imp = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            floor = (time.perf_counter() - t) * 1000
            sec.notes.append(f"python3 -c 'import {mod}': {imp:.0f} ms "
                             f"(python3 -c pass: {floor:.0f} ms)")
    finally:
        client.close()
        host.stop()
        bus2.stop()
        bus.stop()
        shutil.rmtree(work, ignore_errors=True)
    return sec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short runs, fewer lines")
    args = ap.parse_args()
    sec = measure(args.quick)
    print("\n".join(sec.notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

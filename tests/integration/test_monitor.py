"""gvt-client monitor: the current state, then every change, until interrupted."""

import json
import signal
import subprocess
import sys

from harness import Simulation

PARENT = "0000:00:02.0"


def start_monitor(sim: Simulation, *args: str) -> subprocess.Popen[str]:
    """gvt-client monitor as the stranger, as a desktop user watches."""
    proc = subprocess.Popen(sim.as_stranger([sys.executable, "-m", "gvtd.client.main",
                                             "--session", "monitor", *args]),
                            env=sim.stranger_env, cwd=sim.home, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc


def lines_until(proc: subprocess.Popen[str], predicate) -> list[str]:  # type: ignore[no-untyped-def]
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line.rstrip("\n"))
        if predicate(seen[-1]):
            return seen
    raise AssertionError(f"monitor ended early: {seen}")


def test_monitor_json_streams_changes_and_stops_on_ctrl_c(sim: Simulation) -> None:
    sim.client.define(name="before", type="i915-GVTg_V5_8")
    proc = start_monitor(sim, "--json")
    try:
        first = [json.loads(x) for x in lines_until(proc, lambda x: '"ready"' in x)]
        present = {(e["kind"], e["name"]) for e in first if e["event"] == "present"}
        assert {("vgpu", "before"), ("parent", PARENT), ("manager", "gvtd")} <= present
        sim.client.define(name="win10", type="i915-GVTg_V5_8")
        added = json.loads(lines_until(proc, lambda x: '"added"' in x)[-1])
        assert (added["kind"], added["name"], added["properties"]["State"]) == \
            ("vgpu", "win10", "active")
        uuid = sim.client.vgpus()["win10"]["UUID"]
        sim.sim_call("RemoveMdev", "s", [uuid])
        events = [json.loads(x) for x in lines_until(
            proc, lambda x: '"win10"' in x and '"State": "active"' in x and '"changed"' in x)]
        states = [e["properties"]["State"] for e in events
                  if e["event"] == "changed" and e["name"] == "win10" and "State" in e["properties"]]
        assert states == ["inactive", "active"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()


def test_monitor_text_and_daemon_going_away(sim: Simulation) -> None:
    proc = start_monitor(sim)
    try:
        lines_until(proc, lambda x: x.startswith("-- watching"))
        sim.sim_call("UnregisterParent", "s", [PARENT])
        line = lines_until(proc, lambda x: x.startswith(f"parent {PARENT}:") and "Registered" in x)[-1]
        assert "Registered yes -> no" in line
        sim.stop()
        assert proc.wait(30) == 1
        assert proc.stderr is not None and "gvtd went away" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()

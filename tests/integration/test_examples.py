"""The desktop scripts in examples/ against `gvtd --simulate` on a private bus: each starts a
domain with its on-demand vGPU and exits 0 once it runs, names the problem for an unknown
domain, and (gdbus, Python) follows the Domain's State signals while it is not running yet.
They run as the stranger, as a desktop user runs them, with polkit deciding."""

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
from dbus_fast import Variant

from gvtd import names
from harness import ROOT, DBusDaemon, Simulation, plain
from test_domains import domain

EXAMPLES = ROOT / "examples"
SCRIPTS = {
    "busctl": ["sh", str(EXAMPLES / "start-vm-busctl.sh")],
    "gdbus": ["bash", str(EXAMPLES / "start-vm-gdbus.sh")],
    "python": [sys.executable, str(EXAMPLES / "start-vm.py")],
}
TIMEOUT = 60


@pytest.fixture
def desk(dbus: DBusDaemon, tmp_path: Path):  # type: ignore[no-untyped-def]
    """win10 (shut off) and held (paused: active, but not running), each named by an
    on-demand vGPU definition, so each has a Domain object."""
    node = tmp_path / "node.xml"
    paused = domain("held", None).replace("<test:runstate>5<", "<test:runstate>3<")
    node.write_text("<node>" + domain("win10", None) + paused + "</node>")
    (tmp_path / "gvtd.toml").write_text(f'libvirt_uri = "test://{node}"\n')
    sim = Simulation(dbus, config_dir=tmp_path)
    if not sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["LibvirtConnected"]:
        sim.client.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == names.ROOT_PATH
                            and plain(m.body[1]).get("LibvirtConnected") is True)
    for name in ("win10", "held"):
        sim.client.define(name=name, type="i915-GVTg_V5_8", start="on-demand", domain=name)
    yield sim
    sim.stop()


def run(sim: Simulation, script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sim.as_stranger([*SCRIPTS[script], *args]),
                          env=dict(sim.stranger_env, **env), cwd=sim.home, text=True,
                          capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def state(sim: Simulation, name: str) -> str:
    return sim.client.props(names.domain_path(name), names.DOMAIN_IFACE)["State"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_starts_the_domain_and_exits_once_it_runs(desk: Simulation, script: str) -> None:
    unknown = run(desk, script, "--session", "nope")
    assert unknown.returncode == 1, unknown
    assert "cannot start nope" in unknown.stderr and "virsh list --all" in unknown.stderr
    assert unknown.stdout == "" and desk.write_log() == []

    assert state(desk, "win10") == "shut-off"
    done = run(desk, script, "win10", GVTD_BUS="session")  # the bus from the environment
    assert done.returncode == 0, done
    assert done.stdout.strip().splitlines()[-1] == "win10 is running"
    assert state(desk, "win10") == "running"
    assert desk.client.vgpus()["win10"]["State"] == "active"


@pytest.mark.parametrize("script", SCRIPTS)
def test_usage_errors_exit_2_before_touching_a_bus(script: str) -> None:
    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS="unix:path=/nonexistent")
    for args, extra in (([], {}), (["--session", "a", "b"], {}), (["--bogus", "win10"], {}),
                        (["win10"], {"GVTD_BUS": "bogus"})):
        proc = subprocess.run([*SCRIPTS[script], *args], env=dict(env, **extra), text=True,
                              capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        assert proc.returncode == 2, (args, proc)
        assert "usage" in proc.stderr or "GVTD_BUS must be" in proc.stderr, (args, proc)


@pytest.mark.parametrize("script", ["gdbus", "python"])
def test_follows_the_state_signals_until_it_runs_or_stops(desk: Simulation, script: str) -> None:
    """held is paused, so StartDomain has nothing to do and it is not running: the script
    waits on the Domain's PropertiesChanged; when the domain stops, it says so and fails."""
    proc = subprocess.Popen(desk.as_stranger([*SCRIPTS[script], "--session", "held"]),
                            env=desk.stranger_env, cwd=desk.home, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], TIMEOUT)[0], "the script printed nothing"
        assert proc.stdout.readline() == "held is paused; waiting for it to run...\n"
        desk.client.call("StopDomain", "sa{sv}", ["held", {"force": Variant("b", True),
                                                           "timeout": Variant("u", 0)}])
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, (out, err)
    assert "held is shut-off" in err and "virsh domstate --reason held" in err


def test_busctl_reports_a_domain_that_is_not_running(desk: Simulation) -> None:
    """busctl cannot follow signals as a user on the system bus: it reads State once."""
    proc = run(desk, "busctl", "--session", "held")
    assert proc.returncode == 1, proc
    assert "held is paused after starting" in proc.stderr
    assert state(desk, "held") == "paused"


def test_scripts_are_executable() -> None:
    for path in EXAMPLES.glob("start-vm*"):
        assert os.access(path, os.X_OK), path

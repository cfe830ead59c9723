"""`gvt-client doctor` against the real daemon on each emulated host."""

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import DBusDaemon, Simulation

UUID = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"


def doctor(sim: Simulation) -> tuple[int, dict[str, dict[str, str]]]:
    proc = sim.gvt_client("doctor", "--json")
    assert "Traceback" not in proc.stderr
    return proc.returncode, {c["id"]: c for c in json.loads(proc.stdout)}


def failing(checks: dict[str, dict[str, str]]) -> set[str]:
    return {i for i, c in checks.items() if c["severity"] == "fail"}


def test_default_host_passes_every_check(sim: Simulation) -> None:
    code, checks = doctor(sim)
    assert code == 0
    assert {c["severity"] for c in checks.values()} == {"pass"}, checks
    assert {"platform", "cmdline.guc", "module.kvmgt", "iommu", "mdev_types", "render_node",
            "kernel", "mdevctl"} <= set(checks)
    assert "Kaby Lake" in checks["platform"]["message"]


@pytest.fixture
def profile_sim(request: pytest.FixtureRequest,
                dbus: DBusDaemon) -> Iterator[tuple[str, Simulation]]:
    """(profile, simulation) for the profile named by the test's parameter."""
    s = Simulation(dbus, request.param)
    yield request.param, s
    s.stop()


# profile -> the checks it must fail (and no others)
BROKEN = {
    "no-iommu": {"cmdline.intel_iommu", "iommu"},
    "guc-enabled": {"cmdline.guc", "i915.enable_guc", "mdev_types", "log.guc"},
    "icelake": {"platform", "log.unsupported"},
    "small-aperture": {"capacity"},
    "unregistered": {"module.kvmgt", "mdev_types"},
}


@pytest.mark.parametrize("profile_sim", list(BROKEN), indirect=True)
def test_failing_profile_names_its_failures(profile_sim: tuple[str, Simulation]) -> None:
    profile, sim = profile_sim
    code, checks = doctor(sim)
    assert code == 1
    assert failing(checks) == BROKEN[profile]
    assert all(checks[i]["fix"] for i in failing(checks))


@pytest.mark.parametrize("profile_sim", ["icelake"], indirect=True)
def test_icelake_says_what_to_do_instead(profile_sim: tuple[str, Simulation]) -> None:
    """Neither GVT-g nor SR-IOV: no GVT-g steps that lead nowhere, but what works."""
    code, checks = doctor(profile_sim[1])
    assert code == 1 and {"platform", "log.unsupported", "mdevctl"} <= set(checks)
    assert not [i for i in checks if i.split(".")[0] in ("cmdline", "i915", "module")
                or i in ("mdev_types", "capacity")]
    assert "neither GVT-g" in checks["platform"]["message"]
    assert "virtio" in checks["platform"]["fix"] and "passthrough" in checks["platform"]["fix"]


@pytest.mark.parametrize("profile_sim", ["guc-enabled"], indirect=True)
def test_text_checklist_and_exit_status(profile_sim: tuple[str, Simulation]) -> None:
    proc = profile_sim[1].gvt_client("doctor")
    assert proc.returncode == 1
    assert "[FAIL] cmdline.guc:" in proc.stdout and "fix: Remove i915.enable_guc=3" in proc.stdout
    assert "[ok  ] platform:" in proc.stdout
    assert "4 of" in proc.stderr and "checks failed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_mdevctl_auto_start_of_a_gvtd_vgpu_fails(sim: Simulation) -> None:
    sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=UUID)
    settings = tomllib.loads((sim.config_dir / "gvtd.toml").read_text())
    conflict = Path(settings["mdevctl_dir"]) / "0000:00:02.0" / UUID
    conflict.parent.mkdir(parents=True)
    conflict.write_text(json.dumps({"mdev_type": "i915-GVTg_V5_4", "start": "auto"}))
    code, checks = doctor(sim)
    assert code == 1 and failing(checks) == {"mdevctl"}
    assert str(conflict) in checks["mdevctl"]["message"]
    conflict.unlink()
    # mdevctl's files send no event: doctor's answer stands for a few seconds (it is shared
    # between callers, see ManagerInterface) unless gvtd is told to look again.
    sim.client.call("Reload")
    code, checks = doctor(sim)
    assert code == 0

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


# -- SR-IOV hosts ---------------------------------------------------------------------------

# What only a GVT-g host is checked for: an SR-IOV host never gets these findings.
GVT_ONLY = {"cmdline.enable_gvt", "cmdline.ignore_msrs", "cmdline.guc", "i915.enable_gvt",
            "i915.enable_guc", "module.kvmgt", "module.mdev", "mdev_types", "capacity",
            "kernel", "render_node", "log", "mdevctl", "opregion"}
SRIOV_FINDINGS = {"platform", "cmdline.intel_iommu", "sriov.blacklist", "sriov.driver",
                  "sriov.max_vfs", "sriov.vfio", "iommu", "sriov.vf_drivers", "sriov.tmpfiles",
                  "sriov.sysfsutils", "sriov.udev", "sriov.driverctl"}


@pytest.mark.parametrize("profile_sim, platform, extra", [
    ("alderlake-sriov", "Alder Lake", {"sriov.dkms", "sriov.secure_boot", "sriov.guc"}),
    ("tigerlake-xe", "Tiger Lake", {"sriov.force_probe"}),
], indirect=["profile_sim"])
def test_sriov_host_passes_its_own_checks(profile_sim: tuple[str, Simulation], platform: str,
                                          extra: set[str]) -> None:
    code, checks = doctor(profile_sim[1])
    assert code == 0, failing(checks)
    assert SRIOV_FINDINGS | extra <= set(checks)
    assert not set(checks) & GVT_ONLY
    assert {c["severity"] for c in checks.values()} == {"pass"}, checks
    assert platform in checks["platform"]["message"]
    assert not [c for c in checks.values() if "enable_guc=0" in c["fix"] + c["message"]]


SRIOV_BROKEN = {
    # the stock i915: no max_vfs, so no SR-IOV, and no DKMS build of the SR-IOV module
    "alderlake-stock": ({"sriov.driver", "sriov.dkms"}, "strongtz/i915-sriov-dkms"),
    # the SR-IOV module without i915.max_vfs
    "alderlake-maxvfs0": ({"sriov.max_vfs"}, "i915.max_vfs=7"),
}


@pytest.mark.parametrize("profile_sim", list(SRIOV_BROKEN), indirect=True)
def test_failing_sriov_profile_names_its_failures(profile_sim: tuple[str, Simulation]) -> None:
    profile, sim = profile_sim
    code, checks = doctor(sim)
    ids, fix = SRIOV_BROKEN[profile]
    assert code == 1 and failing(checks) == ids
    assert any(fix in checks[i]["fix"] for i in ids), [checks[i] for i in ids]
    assert all(checks[i]["fix"] for i in ids)


@pytest.mark.parametrize("profile_sim", ["alderlake-sriov"], indirect=True)
def test_tmpfiles_line_setting_the_vfs_fails(profile_sim: tuple[str, Simulation]) -> None:
    """The i915-sriov-dkms package's tmpfiles.d line, uncommented: two owners of the count."""
    sim = profile_sim[1]
    settings = tomllib.loads((sim.config_dir / "gvtd.toml").read_text())
    conflict = Path(settings["host_root"]) / "etc/tmpfiles.d/i915-set-sriov-numvfs.conf"
    conflict.parent.mkdir(parents=True)
    conflict.write_text("w /sys/devices/pci0000:00/0000:00:02.0/sriov_numvfs - - - - 7\n")
    sim.client.call("Reload")  # tmpfiles.d sends no event
    code, checks = doctor(sim)
    assert code == 1 and failing(checks) == {"sriov.tmpfiles"}
    assert f"{conflict}:1" in checks["sriov.tmpfiles"]["message"]
    conflict.unlink()
    sim.client.call("Reload")
    assert doctor(sim)[0] == 0


@pytest.mark.parametrize("profile_sim", ["alderlake-sriov"], indirect=True)
def test_vfs_left_on_i915_fail(profile_sim: tuple[str, Simulation]) -> None:
    """Another tool writes the count with autoprobe on, as a tmpfiles.d line does at boot:
    the kernel binds the new VFs to i915, the host's."""
    sim = profile_sim[1]
    numvfs = sim.root / "sys/devices/pci0000:00/0000:00:02.0/sriov_numvfs"
    numvfs.write_text("2\n")
    sim.client.call("Reload")
    code, checks = doctor(sim)
    assert code == 1 and failing(checks) == {"sriov.vf_drivers"}
    assert "0000:00:02.1 on i915, 0000:00:02.2 on i915" in checks["sriov.vf_drivers"]["message"]

"""`gvtd --simulate` takes its directories from systemd's environment as gvtd does, the
flags winning: seen in what its Simulator reports and where its daemon writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import DBusDaemon, Simulation


def test_simulation_honours_the_environment_and_flags_win(
        dbus: DBusDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVTD_CONFIG_DIR", str(tmp_path / "env-etc"))
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'env-state'}:{tmp_path / 'second'}")
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "env-run"))
    sim = Simulation(dbus)
    try:
        props = sim.sim_props()
        assert (props["ConfigDir"], props["StateDir"], props["RuntimeDir"]) == (
            str(tmp_path / "env-etc"), str(tmp_path / "env-state"), str(tmp_path / "env-run"))
        sim.client.define(name="a", type="i915-GVTg_V5_8")
        assert (tmp_path / "env-etc" / "vgpus.d" / "a.toml").exists()
        assert (tmp_path / "env-state" / "created.json").exists()
    finally:
        sim.stop()

    sim = Simulation(dbus, extra=["--config-dir", str(tmp_path / "flag-etc"),
                                  "--state-dir", str(tmp_path / "flag-state"),
                                  "--runtime-dir", str(tmp_path / "flag-run")])
    try:
        props = sim.sim_props()
        assert (props["ConfigDir"], props["StateDir"], props["RuntimeDir"]) == (
            str(tmp_path / "flag-etc"), str(tmp_path / "flag-state"), str(tmp_path / "flag-run"))
        sim.client.define(name="b", type="i915-GVTg_V5_8")
        assert (tmp_path / "flag-etc" / "vgpus.d" / "b.toml").exists()
        assert not (tmp_path / "env-etc" / "vgpus.d" / "b.toml").exists()
    finally:
        sim.stop()

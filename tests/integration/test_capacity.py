"""Capacity: what `types` reports next to existing vGPUs, and refusals that write nothing."""

import json

import pytest

from gvtd import names
from harness import CallError, DBusDaemon, Simulation, tree_snapshot


def available(sim: Simulation) -> dict[str, int]:
    proc = sim.gvt_client("types", "--json", check=True)
    return {t["id"]: t["available"] for t in json.loads(proc.stdout)}


def creates(sim: Simulation) -> list[tuple[str, str, str]]:
    return [e for e in sim.write_log() if e[0].endswith("/create")]


def test_available_already_counts_existing_vgpus(sim: Simulation) -> None:
    assert available(sim) == {"i915-GVTg_V5_8": 2, "i915-GVTg_V5_4": 1, "i915-GVTg_V5_2": 0,
                              "i915-GVTg_V5_1": 0}
    sim.client.define(name="small", type="i915-GVTg_V5_8")
    # one _8 took 64 MB of the 128 MB left: one more _8 fits, the _4 no longer does
    assert available(sim) == {"i915-GVTg_V5_8": 1, "i915-GVTg_V5_4": 0, "i915-GVTg_V5_2": 0,
                              "i915-GVTg_V5_1": 0}


def test_manual_create_beyond_capacity_writes_nothing(sim: Simulation) -> None:
    sim.client.define(name="a", type="i915-GVTg_V5_4")
    sim.client.define(name="b", type="i915-GVTg_V5_4", start="manual")
    before = creates(sim)
    with pytest.raises(CallError) as e:
        sim.client.call("CreateVGPU", "s", ["b"])
    assert e.value.name == names.ERROR_PREFIX + "NoCapacity"
    assert creates(sim) == before


def test_no_type_fits_a_small_aperture(dbus: DBusDaemon) -> None:
    sim = Simulation(dbus, "small-aperture")
    try:
        etc = tree_snapshot(sim.config_dir)
        with pytest.raises(CallError) as e:
            sim.client.define(name="win10", min_resolution="1024x768")
        assert e.value.name == names.ERROR_PREFIX + "NoCapacity"
        assert "DVMT" in e.value.text
        assert tree_snapshot(sim.config_dir) == etc
        assert creates(sim) == []
    finally:
        sim.stop()

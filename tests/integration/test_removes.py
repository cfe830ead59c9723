"""A remove the kernel holds or refuses, as while QEMU has the vGPU open: gvtd keeps
answering, says why with a named error or the vGPU's LastError, and loses nothing."""

from __future__ import annotations

import pytest

from gvtd import names
from harness import CallError, Simulation, plain

A = "aaaaaaaa-1111-4222-8333-444444444444"
B = "bbbbbbbb-1111-4222-8333-444444444444"
W = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"  # the win10 domain's vGPU
BUSY = names.ERROR_PREFIX + "Busy"


def removes(sim: Simulation) -> list[tuple[str, str]]:
    """(uuid, result) of every write to an mdev's remove."""
    return [(w[0].split("/")[-2], w[2]) for w in sim.write_log() if w[0].endswith("/remove")]


def problems(sim: Simulation) -> dict[str, tuple[str, str]]:
    m = sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)
    return {p[0]: (p[1], p[2]) for p in m["Problems"]}


def connected(sim: Simulation) -> None:
    if not sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["LibvirtConnected"]:
        sim.client.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == names.ROOT_PATH
                            and plain(m.body[1]).get("LibvirtConnected") is True)


def test_a_held_remove_leaves_gvtd_answering(sim: Simulation) -> None:
    """RemoveVGPU waits for the kernel as long as QEMU holds the device; meanwhile reads,
    Diagnose and a CreateVGPU of another vGPU are answered, and a second remove, a create
    of the same vGPU or a start of its domain is Busy rather than queued behind it."""
    connected(sim)
    sim.client.define(name="a", type="i915-GVTg_V5_8", uuid=A, domain="win10")
    sim.client.define(name="b", type="i915-GVTg_V5_8", uuid=B, start="manual")
    sim.sim_call("HoldRemove", "s", [A])
    reply = sim.client.send_call("RemoveVGPU", "s", ["a"])
    assert sim.sim_call("WaitStalled")[0].endswith(f"/{A}/remove")

    assert sim.client.vgpus()["a"]["State"] == "active"  # still there: the kernel holds it
    sim.client.call("Diagnose", timeout=10)
    assert sim.client.call("CreateVGPU", "s", ["b"], timeout=10) == [names.vgpu_path(B)]
    assert sim.client.vgpus()["b"]["State"] == "active"
    for member in ("RemoveVGPU", "CreateVGPU"):
        with pytest.raises(CallError) as again:
            sim.client.call(member, "s", ["a"], timeout=10)
        assert again.value.name == BUSY and "being removed" in again.value.text
    with pytest.raises(CallError) as start:
        sim.client.call("StartDomain", "sa{sv}", ["win10", {}], timeout=10)
    assert start.value.name == BUSY and "being removed" in start.value.text

    sim.sim_call("ReleaseWrites")  # QEMU lets go
    assert reply().message_type.name == "METHOD_RETURN"
    v = sim.client.vgpus()
    assert (v["a"]["State"], v["b"]["State"]) == ("inactive", "active")
    assert removes(sim) == [(A, "ok")]  # written once


def test_a_refused_remove_is_busy_and_the_vgpu_stays(sim: Simulation) -> None:
    """EBUSY: RemoveVGPU and Undefine answer Busy with a sentence, the vGPU is still shown
    active with LastError and a Problem saying why, the definition stays; the retry works."""
    sim.client.define(name="a", type="i915-GVTg_V5_8", uuid=A)
    sim.sim_call("RefuseRemove", "su", [A, 2])
    with pytest.raises(CallError) as undefine:
        sim.client.call("Undefine", "s", ["a"])
    assert undefine.value.name == BUSY
    assert sim.client.vgpus()["a"]["LastError"].startswith("Not removed: ")
    with pytest.raises(CallError) as refused:
        sim.client.call("RemoveVGPU", "s", ["a"])
    assert refused.value.name == BUSY and "EBUSY" in refused.value.text \
        and "Stop that VM" in refused.value.text
    v = sim.client.vgpus()["a"]
    assert v["State"] == "active" and v["LastError"].startswith("Not removed: ")
    severity, text = problems(sim)["vgpu:a"]
    assert severity == "warn" and "EBUSY" in text
    assert (sim.config_dir / "vgpus.d" / "a.toml").exists()

    sim.client.call("RemoveVGPU", "s", ["a"])
    v = sim.client.vgpus()["a"]
    assert (v["State"], v["LastError"]) == ("inactive", "")
    assert "vgpu:a" not in problems(sim)
    assert removes(sim) == [(A, "EBUSY"), (A, "EBUSY"), (A, "ok")]


def test_on_demand_release_refused_after_the_domain_stops(sim: Simulation) -> None:
    """The domain stops but the kernel refuses its on-demand vGPU's remove: the stop is
    done, the vGPU is shown active with a LastError and a Problem naming the domain, and a
    later stop removes it."""
    connected(sim)
    sim.client.define(name="win10", type="i915-GVTg_V5_8", uuid=W, start="on-demand",
                      domain="win10")
    sim.client.call("StartDomain", "sa{sv}", ["win10", {}])
    # two: StopDomain's release, then the one libvirt's stop event asks for
    sim.sim_call("RefuseRemove", "su", [W, 2])
    sim.client.call("StopDomain", "sa{sv}", ["win10", {}])
    domain = names.domain_path("win10")
    assert sim.client.props(domain, names.DOMAIN_IFACE)["State"] == "shut-off"
    v = sim.client.vgpus()["win10"]
    assert v["State"] == "active"
    assert v["LastError"].startswith("Not removed after win10 stopped: ") and "EBUSY" in v["LastError"]
    severity, text = problems(sim)["vgpu:win10"]
    assert severity == "warn" and "win10 stopped" in text

    sim.client.call("StopDomain", "sa{sv}", ["win10", {}])
    v = sim.client.vgpus()["win10"]
    assert (v["State"], v["LastError"]) == ("inactive", "")
    assert "vgpu:win10" not in problems(sim)
    assert removes(sim) == [(W, "EBUSY"), (W, "EBUSY"), (W, "ok")]


PARENT = "0000:00:02.0"


def test_an_adopted_mdev_survives_undefine_and_its_domain_stopping(sim: Simulation) -> None:
    """An mdev made by someone else, then named by a definition, is used and shown as
    adopted, never removed: not by RemoveVGPU, not by Undefine, not by the on-demand
    release after its domain stops. One gvtd created is removed as before."""
    connected(sim)
    theirs = sim.sim_call("AddForeignMdev", "ss", [PARENT, "i915-GVTg_V5_8"])[0]
    sim.client.define(name="win10", type="i915-GVTg_V5_8", uuid=theirs, start="on-demand",
                      domain="win10")
    sim.client.define(name="mine", type="i915-GVTg_V5_8", uuid=A)
    v = sim.client.vgpus()
    assert (v["win10"]["State"], v["win10"]["Origin"], v["win10"]["Managed"]) == \
        ("active", "adopted", False)
    assert (v["mine"]["Origin"], v["mine"]["Managed"]) == ("created", True)
    listed = sim.gvt_client("list", check=True).stdout
    assert "ORIGIN" in listed and "adopted" in listed and "created" in listed

    sim.client.call("StartDomain", "sa{sv}", ["win10", {}])
    sim.client.call("StopDomain", "sa{sv}", ["win10", {}])
    assert sim.client.vgpus()["win10"]["State"] == "active"
    with pytest.raises(CallError) as refused:
        sim.client.call("RemoveVGPU", "s", ["win10"])
    assert refused.value.name == names.ERROR_PREFIX + "InvalidArgument"
    assert "existed when its definition named it" in refused.value.text

    sim.client.call("Undefine", "s", ["win10"])
    sim.client.call("Undefine", "s", ["mine"])
    v = sim.client.vgpus()
    assert set(v) == {theirs} and (v[theirs]["Origin"], v[theirs]["Managed"]) == ("foreign", False)
    assert (sim.root / "sys/bus/mdev/devices" / theirs).exists()
    assert removes(sim) == [(A, "ok")]  # only gvtd's own


def test_a_definition_changed_during_its_undefines_remove_stays(sim: Simulation) -> None:
    """Undefine lets the host lock go while the kernel holds the remove; a Reload of a
    hand-edited definition meanwhile wins: the Undefine then answers Busy and the new file
    stays (it used to delete it, or fail with an internal error when it was gone)."""
    sim.client.define(name="a", type="i915-GVTg_V5_8", uuid=A, start="manual")
    sim.client.call("CreateVGPU", "s", ["a"])
    sim.sim_call("HoldRemove", "s", [A])
    reply = sim.client.send_call("Undefine", "s", ["a"])
    assert sim.sim_call("WaitStalled")[0].endswith(f"/{A}/remove")
    path = sim.config_dir / "vgpus.d" / "a.toml"
    path.write_text(path.read_text().replace('"manual"', '"on-demand"'))
    sim.client.call("Reload", timeout=10)
    sim.sim_call("ReleaseWrites")
    answer = reply()
    assert answer.message_type.name == "ERROR" and answer.error_name == BUSY
    assert "defined again" in answer.body[0]
    assert 'start = "on-demand"' in path.read_text()
    assert sim.client.vgpus()["a"]["Start"] == "on-demand"

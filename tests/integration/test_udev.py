"""gvtd follows the kernel through real uevents (umockdev), without polling."""

from pathlib import Path

import pytest

from gvtd import names
from harness import DBusDaemon, Simulation, plain

PARENT = "0000:00:02.0"


def changed(sim: Simulation, path: str, prop: str, value: object,
            after: object = None):  # type: ignore[no-untyped-def]
    """Wait for a PropertiesChanged that sets prop to value on path (after another one)."""
    return sim.client.wait_for(
        lambda m: m.member == "PropertiesChanged" and m.path == path
        and prop in m.body[1] and plain(m.body[1][prop]) == value, after=after)


def mark(sim: Simulation) -> str:
    """A foreign mdev as an end marker: events are handled in order, so once its object
    appears every earlier event has been handled."""
    uuid = sim.sim_call("AddForeignMdev", "ss", [PARENT, "i915-GVTg_V5_8"])[0]
    sim.client.wait_for(lambda m: m.member == "InterfacesAdded"
                        and m.body[0] == names.vgpu_path(uuid))
    return uuid


@pytest.fixture
def late(dbus: DBusDaemon):  # type: ignore[no-untyped-def]
    """i915 is there but kvmgt has not registered the parent yet."""
    s = Simulation(dbus, profile="unregistered")
    yield s
    s.stop()


def test_kvmgt_loading_late_creates_auto_vgpus(late: Simulation) -> None:
    path = late.client.define(name="win10", type="i915-GVTg_V5_4")
    assert late.client.vgpus()["win10"]["State"] == "parent-missing"
    assert late.client.props(names.parent_path(PARENT), names.PARENT_IFACE)["Registered"] is False
    late.sim_call("RegisterParent", "s", [PARENT])
    changed(late, path, "State", "active")
    changed(late, names.parent_path(PARENT), "Registered", True)
    creates = [w for w in late.write_log() if w[0].endswith("/create")]
    assert len(creates) == 1 and creates[0][2] == "ok"


def test_unregister_register_cycle(sim: Simulation) -> None:
    path = sim.client.define(name="win10", type="i915-GVTg_V5_4")
    uuid = sim.client.vgpus()["win10"]["UUID"]
    for _ in range(5):  # more cycles than gvtd's bound on re-creating a vanishing vGPU
        log = sim.write_log()
        sim.sim_call("UnregisterParent", "s", [PARENT])
        missing = changed(sim, path, "State", "parent-missing")
        changed(sim, names.parent_path(PARENT), "Registered", False)
        assert sim.write_log() == log  # nothing written while the parent is away
        sim.sim_call("RegisterParent", "s", [PARENT])
        changed(sim, path, "State", "active", after=missing)
        assert (sim.root / "sys/bus/mdev/devices" / uuid).exists()
        sim.client.signals.clear()


def test_removed_outside_is_recreated(sim: Simulation) -> None:
    path = sim.client.define(name="win10", type="i915-GVTg_V5_4")
    uuid = sim.client.vgpus()["win10"]["UUID"]
    sim.sim_call("RemoveMdev", "s", [uuid])
    gone = changed(sim, path, "State", "inactive")
    changed(sim, path, "State", "active", after=gone)
    assert [w[1] for w in sim.write_log() if w[0].endswith("/create")] == [uuid, uuid]


def test_removed_on_request_is_not_recreated(sim: Simulation) -> None:
    path = sim.client.define(name="win10", type="i915-GVTg_V5_8")
    sim.client.call("RemoveVGPU", "s", ["win10"])
    mark(sim)
    assert sim.client.vgpus()["win10"]["State"] == "inactive"
    assert len([w for w in sim.write_log() if w[0].endswith("/create")]) == 1
    sim.client.call("CreateVGPU", "s", ["win10"])
    assert sim.client.vgpus()["win10"]["State"] == "active"
    del path


def test_restore_removed_off(dbus: DBusDaemon, tmp_path: Path) -> None:
    (tmp_path / "gvtd.toml").write_text("restore_removed = false\n")
    sim = Simulation(dbus, config_dir=tmp_path)
    try:
        path = sim.client.define(name="win10", type="i915-GVTg_V5_4")
        uuid = sim.client.vgpus()["win10"]["UUID"]
        sim.sim_call("RemoveMdev", "s", [uuid])
        changed(sim, path, "State", "failed")
        v = sim.client.vgpus()["win10"]
        assert "restore_removed = false" in v["LastError"]
        mark(sim)
        assert len([w for w in sim.write_log() if w[0].endswith("/create")]) == 1
    finally:
        sim.stop()


def test_foreign_mdevs_come_and_go(sim: Simulation) -> None:
    uuid = sim.sim_call("AddForeignMdev", "ss", [PARENT, "i915-GVTg_V5_8"])[0]
    added = sim.client.wait_for(lambda m: m.member == "InterfacesAdded"
                                and m.body[0] == names.vgpu_path(uuid))
    props = plain(added.body[1][names.VGPU_IFACE])
    assert (props["Managed"], props["State"], props["Type"]) == (False, "active", "i915-GVTg_V5_8")
    sim.sim_call("RemoveMdev", "s", [uuid])
    sim.client.wait_for(lambda m: m.member == "InterfacesRemoved"
                        and m.body[0] == names.vgpu_path(uuid))
    assert uuid not in sim.client.vgpus()


def test_a_new_mdev_is_shown_before_its_parent_is_read_again(sim: Simulation) -> None:
    """The add uevent's mdev is shown as soon as it is read: the parent's counts (a file per
    type) follow in a signal of their own instead of holding it back."""
    parent = names.parent_path(PARENT)
    uuid = sim.sim_call("AddForeignMdev", "ss", [PARENT, "i915-GVTg_V5_8"])[0]
    counted = sim.client.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == parent
                                  and "Types" in m.body[1])
    before = sim.client.signals[:sim.client.signals.index(counted)]
    assert any(m.member == "InterfacesAdded" and m.body[0] == names.vgpu_path(uuid)
               for m in before)


def test_bursts_converge_to_what_sysfs_shows(dbus: DBusDaemon) -> None:
    sim = Simulation(dbus, profile="multi")
    try:
        parents = [f"mtty{i}" for i in range(8)]
        made: list[str] = []
        for i in range(25):  # adds and removes, interleaved over 8 parents
            made.append(sim.sim_call("AddForeignMdev", "ss", [parents[i % 8], "mtty-1"])[0])
            if i % 2:
                sim.sim_call("RemoveMdev", "s", [made.pop(0)])
        # devices already gone when gvtd reads them: add and remove back to back
        for _ in range(5):
            gone = sim.sim_call("AddForeignMdev", "ss", [parents[0], "mtty-1"])[0]
            sim.sim_call("RemoveMdev", "s", [gone])
        mark(sim)
        shown = {v["UUID"] for v in sim.client.vgpus().values() if not v["Managed"]}
        in_sysfs = {p.name for p in (sim.root / "sys/bus/mdev/devices").iterdir()}
        assert shown == in_sysfs
        assert set(made) <= shown
        avail = {p["Address"]: p for p in (
            ifaces[names.PARENT_IFACE] for ifaces in sim.client.objects().values()
            if names.PARENT_IFACE in ifaces)}
        for name in parents:
            text = (sim.root / f"sys/class/mdev_bus/{name}/mdev_supported_types/mtty-1/"
                    "available_instances").read_text()
            assert [t[2] for t in avail[name]["Types"] if t[0] == "mtty-1"] == [int(text)]
    finally:
        sim.stop()


def test_failed_create_is_not_retried_on_every_event(sim: Simulation) -> None:
    """A definition that cannot fit waits for room instead of retrying on each uevent."""
    sim.client.define(name="a", type="i915-GVTg_V5_8")  # leaves 64 MB: room for a V5_8 only
    d = sim.config_dir / "vgpus.d"
    (d / "b.toml").write_text('uuid = "11111111-2222-4333-8444-555555555555"\n'
                              'type = "i915-GVTg_V5_4"\n')
    sim.client.call("Reload")
    assert sim.client.vgpus()["b"]["State"] == "failed"
    for _ in range(5):
        sim.sim_call("RemoveMdev", "s", [mark(sim)])
    assert len([w for w in sim.write_log() if w[0].endswith("/create")]) == 1
    b = names.vgpu_path(sim.client.vgpus()["b"]["UUID"])
    sim.client.call("Undefine", "s", ["a"])  # room appears (its uevents say so): b is created
    changed(sim, b, "State", "active")


def test_mdev_read_before_its_type_link_is_shown_once_the_link_is_there(
        sim: Simulation) -> None:
    """Linux sends an mdev's add and bind uevents before it adds the `mdev_type` link, and
    no event after it: gvtd reading the mdev in between must read it again by itself."""
    early = sim.sim_call("AddUntypedMdev", "ss", [PARENT, "i915-GVTg_V5_8"])[0]
    mark(sim)  # the events of `early` are handled: gvtd read it without its type link
    assert names.vgpu_path(early) not in sim.client.objects()
    sim.sim_call("TypeMdev", "s", [early])  # the link appears; no uevent goes out
    sim.client.wait_for(lambda m: m.member == "InterfacesAdded"
                        and m.body[0] == names.vgpu_path(early))
    vgpu = sim.client.props(names.vgpu_path(early), names.VGPU_IFACE)
    assert (vgpu["Parent"], vgpu["Type"], vgpu["State"]) == (PARENT, "i915-GVTg_V5_8", "active")

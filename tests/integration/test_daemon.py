"""The real daemon on a private bus over the emulated kernel, driven through D-Bus."""

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gvtd import names
from harness import ROOT, CallError, Simulation, tree_snapshot

UUID = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"
PARENT = "0000:00:02.0"
ERR = names.ERROR_PREFIX


def creates(sim: Simulation) -> list[tuple[str, str, str]]:
    return [e for e in sim.write_log() if e[0].endswith("/create")]


def _api(xml: str) -> dict[str, set[tuple[str, ...]]]:
    """Interfaces -> members with their types, ignoring docs and the standard interfaces."""
    out: dict[str, set[tuple[str, ...]]] = {}
    for iface in ET.fromstring(xml).iter("interface"):
        name = iface.get("name", "")
        if not name.startswith("io.github.gvtd1"):
            continue
        members = out.setdefault(name, set())
        for m in iface:
            args = tuple(f"{a.get('direction', 'in')}:{a.get('type')}" for a in m.iter("arg"))
            members.add((m.tag, m.get("name", ""), m.get("type", ""), m.get("access", ""), *args))
    return out


def test_introspection_matches_interface_xml(sim: Simulation) -> None:
    sim.client.define(name="win10", type="i915-GVTg_V5_4", domain="win10")
    sim.client.wait_for(lambda m: m.member == "InterfacesAdded"
                        and m.body[0] == names.domain_path("win10"))
    shipped = _api((ROOT / "dbus-policy" / "io.github.gvtd1.xml").read_text())
    live: dict[str, set[tuple[str, ...]]] = {}
    for path in (names.ROOT_PATH, names.parent_path(PARENT), names.domain_path("win10"),
                 names.vgpu_path(sim.client.vgpus()["win10"]["UUID"])):
        xml = sim.client.call("Introspect", path=path,
                              iface="org.freedesktop.DBus.Introspectable")[0]
        live.update(_api(xml))
    assert live == shipped


def test_define_creates_and_announces(sim: Simulation) -> None:
    path = sim.client.define(name="win10", min_resolution="1920x1200", domain="win10")
    added = sim.client.wait_for(lambda m: m.member == "InterfacesAdded" and m.body[0] == path)
    assert names.VGPU_IFACE in added.body[1]
    v = sim.client.vgpus()["win10"]
    assert (v["State"], v["Type"], v["Parent"], v["Managed"]) == \
        ("active", "i915-GVTg_V5_4", PARENT, True)
    assert (sim.root / "sys/bus/mdev/devices" / v["UUID"]).exists()
    assert creates(sim) == [(f"/sys/devices/pci0000:00/{PARENT}/mdev_supported_types/"
                             "i915-GVTg_V5_4/create", v["UUID"], "ok")]
    text = (sim.config_dir / "vgpus.d" / "win10.toml").read_text()
    assert f'uuid = "{v["UUID"]}"' in text and 'min_resolution = "1920x1200"' in text
    # the parent's available instances went down, and that was signalled
    sim.client.wait_for(lambda m: m.member == "PropertiesChanged"
                        and m.path == names.parent_path(PARENT) and "Types" in m.body[1])


def test_an_mdev_vgpu_and_its_parent_show_the_mdev_backend(sim: Simulation) -> None:
    """The backend properties (docs/backends.md) of an mdev: backend mdev, no address; its
    parent of kind mdev, without virtual functions."""
    sim.client.define(name="win10", type="i915-GVTg_V5_4")
    v = sim.client.vgpus()["win10"]
    assert (v["State"], v["Backend"], v["Address"]) == ("active", "mdev", "")
    p = sim.client.props(names.parent_path(PARENT), names.PARENT_IFACE)
    assert (p["Kind"], p["TotalVFs"], p["NumVFs"]) == ("mdev", 0, 0)


def test_reboot_recreates_auto_vgpus_only(sim: Simulation) -> None:
    sim.client.define(name="auto1", type="i915-GVTg_V5_8", uuid=UUID)
    sim.client.define(name="later", type="i915-GVTg_V5_8", start="manual")
    assert sim.client.vgpus()["later"]["State"] == "inactive"
    sim.client.call("CreateVGPU", "s", ["later"])
    assert len(creates(sim)) == 2
    sim.sim_call("Reboot")
    v = sim.client.vgpus()
    assert v["auto1"]["State"] == "active"
    assert v["later"]["State"] == "inactive"
    assert [c[1] for c in creates(sim)] == [UUID, v["later"]["UUID"], UUID]
    # the start's time includes the emulated kernel's answer to that create, and says so
    start = sim.sim_props()
    assert 0 < start["StartupKernelMs"] < start["StartupMs"]
    sim.sim_call("RestartDaemon")  # nothing to create
    assert sim.sim_props()["StartupKernelMs"] == 0


def test_existing_mdev_is_adopted_not_recreated(sim: Simulation) -> None:
    uuid = sim.sim_call("AddForeignMdev", "ss", [PARENT, "i915-GVTg_V5_8"])[0]
    (sim.config_dir / "vgpus.d").mkdir(exist_ok=True)
    (sim.config_dir / "vgpus.d" / "mine.toml").write_text(
        f'uuid = "{uuid}"\ntype = "i915-GVTg_V5_8"\n')
    before = len(creates(sim))
    sim.client.call("Reload")
    v = sim.client.vgpus()["mine"]
    # used and shown, but gvtd did not create it: never removed (see test_removes.py)
    assert (v["State"], v["Managed"], v["Origin"]) == ("active", False, "adopted")
    assert len(creates(sim)) == before


def test_foreign_mdev_is_shown_and_never_removed(sim: Simulation) -> None:
    uuid = sim.sim_call("AddForeignMdev", "ss", [PARENT, "i915-GVTg_V5_8"])[0]
    sim.sim_call("RestartDaemon")  # gvtd starting while a foreign mdev exists
    v = sim.client.vgpus()[uuid]
    assert (v["Managed"], v["State"], v["Name"]) == (False, "active", "")
    with pytest.raises(CallError) as e:
        sim.client.call("RemoveVGPU", "s", [uuid])
    assert e.value.name == ERR + "InvalidArgument"
    assert "never removes" in e.value.text
    assert not [w for w in sim.write_log() if w[0].endswith("/remove")]
    assert (sim.root / "sys/bus/mdev/devices" / uuid).exists()


def test_parent_missing_then_created_on_reload(sim: Simulation) -> None:
    sim.sim_call("UnregisterParent", "s", [PARENT])
    sim.sim_call("RestartDaemon")
    sim.client.define(name="win10", type="i915-GVTg_V5_4")
    v = sim.client.vgpus()["win10"]
    assert v["State"] == "parent-missing" and "registers" in v["LastError"]
    p = sim.client.props(names.parent_path(PARENT), names.PARENT_IFACE)
    assert p["Registered"] is False
    sim.sim_call("RegisterParent", "s", [PARENT])
    sim.client.call("Reload")
    assert sim.client.vgpus()["win10"]["State"] == "active"


def test_no_capacity_names_need_and_writes_nothing(sim: Simulation) -> None:
    sim.client.define(name="first", type="i915-GVTg_V5_4")
    etc = tree_snapshot(sim.config_dir)
    log = sim.write_log()
    with pytest.raises(CallError) as e:
        sim.client.define(name="second", type="i915-GVTg_V5_4")
    assert e.value.name == ERR + "NoCapacity"
    assert "128 MB of aperture" in e.value.text and "no GVT-g type fits" in e.value.text
    assert "DVMT" in e.value.text
    assert tree_snapshot(sim.config_dir) == etc
    assert sim.write_log() == log


def test_manual_create_beyond_capacity_is_no_capacity(sim: Simulation) -> None:
    sim.client.define(name="a", type="i915-GVTg_V5_4")
    sim.client.define(name="b", type="i915-GVTg_V5_4", start="manual")
    with pytest.raises(CallError) as e:
        sim.client.call("CreateVGPU", "s", ["b"])
    assert e.value.name == ERR + "NoCapacity"
    v = sim.client.vgpus()["b"]
    assert v["State"] == "failed" and "No room" in v["LastError"]


BAD = [
    ({"name": "x", "type": "i915-GVTg_V5_4", "uuid": "1234"}, "InvalidArgument", "uuid"),
    ({"name": "x", "type": "i915-GVTg_V5_4", "uuid": UUID.upper()}, "InvalidArgument", "lower-case"),
    ({"name": "x", "type": "i915-GVTg_V9_9"}, "InvalidArgument", "offers"),
    ({"name": "x", "type": "../../../../devices"}, "InvalidArgument", "type"),
    ({"name": "x", "type": "i915-GVTg_V5_4/../x"}, "InvalidArgument", "type"),
    ({"name": "a b", "type": "i915-GVTg_V5_4"}, "InvalidArgument", "name"),
    ({"name": "x" * 100_000, "type": "i915-GVTg_V5_4"}, "InvalidArgument", "name"),
    ({"name": "x", "type": "i915-GVTg_V5_4", "domain": "d" * 100_000}, "InvalidArgument", "domain"),
    ({"name": "x", "type": "i915-GVTg_V5_4", "colour": "red"}, "InvalidArgument", "Unknown key"),
    ({"name": "x", "min_resolution": "1920x1200", "type": "i915-GVTg_V5_4"}, "InvalidArgument",
     "exactly one"),
    ({"name": "x", "min_resolution": "7680x4320"}, "InvalidArgument", "reaches"),
    ({"name": "x", "type": "i915-GVTg_V5_4", "parent": "../../x"}, "InvalidArgument", "parent"),
]


@pytest.mark.parametrize("options, error, text", BAD)
def test_bad_define_is_named_and_writes_nothing(sim: Simulation, options: dict, error: str,
                                                text: str) -> None:
    etc = tree_snapshot(sim.config_dir)
    with pytest.raises(CallError) as e:
        sim.client.define(**options)
    assert e.value.name == ERR + error
    assert text in e.value.text
    assert len(e.value.text) < 1000
    assert tree_snapshot(sim.config_dir) == etc
    assert sim.write_log() == []


def test_wrong_variant_type_and_duplicate_name(sim: Simulation) -> None:
    from dbus_fast import Variant

    with pytest.raises(CallError) as e:
        sim.client.call("Define", "a{sv}", [{"name": Variant("s", "x"),
                                             "type": Variant("u", 4)}])
    assert e.value.name == ERR + "InvalidArgument" and "D-Bus type" in e.value.text
    sim.client.define(name="x", type="i915-GVTg_V5_8")
    etc = tree_snapshot(sim.config_dir)
    with pytest.raises(CallError) as e:
        sim.client.define(name="x", type="i915-GVTg_V5_8")
    assert e.value.name == ERR + "InvalidArgument" and "already defined" in e.value.text
    assert tree_snapshot(sim.config_dir) == etc
    assert len(creates(sim)) == 1


def test_invalid_file_is_a_problem_and_others_work(sim: Simulation) -> None:
    d = sim.config_dir / "vgpus.d"
    d.mkdir(exist_ok=True)
    (d / "bad.toml").write_text(f'uuid = "{UUID}"\ntype = 5\n')
    (d / "good.toml").write_text('uuid = "11111111-2222-4333-8444-555555555555"\n'
                                 'type = "i915-GVTg_V5_8"\n')
    sim.client.call("Reload")
    m = sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)
    assert m["State"] == "degraded"
    (problem,) = m["Problems"]
    assert "bad.toml" in problem[2] and "type" in problem[2]
    assert sim.client.vgpus()["good"]["State"] == "active"
    (d / "bad.toml").unlink()
    sim.client.call("Reload")
    m = sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)
    assert (m["State"], m["Problems"]) == ("running", [])


def test_define_leaves_a_file_it_did_not_load_alone(sim: Simulation) -> None:
    """A definition written by hand and not reloaded yet, and one that failed validation,
    are not replaced by a Define of their name: Busy names the file and what to do, nothing
    is written or created; after a reload the hand-written one is what runs."""
    d = sim.config_dir / "vgpus.d"
    d.mkdir(exist_ok=True)
    (d / "bad.toml").write_text(f'uuid = "{UUID}"\ntype = 5\n')
    sim.client.call("Reload")
    (d / "hand.toml").write_text('uuid = "11111111-2222-4333-8444-555555555555"\n'
                                 'type = "i915-GVTg_V5_8"\n')
    etc = tree_snapshot(sim.config_dir)
    for name, why in (("hand", "gvtd has not loaded it"), ("bad", "failed validation")):
        with pytest.raises(CallError) as e:
            sim.client.define(name=name, type="i915-GVTg_V5_4")
        assert e.value.name == ERR + "Busy"
        assert f"{d / name}.toml already exists and {why}" in e.value.text
        assert "gvt-client reload" in e.value.text and "remove it" in e.value.text
    assert tree_snapshot(sim.config_dir) == etc
    assert creates(sim) == []
    sim.client.call("Reload")
    assert sim.client.vgpus()["hand"]["Type"] == "i915-GVTg_V5_8"


def test_undefine_removes_what_gvtd_created(sim: Simulation) -> None:
    path = sim.client.define(name="win10", type="i915-GVTg_V5_4")
    uuid = sim.client.vgpus()["win10"]["UUID"]
    sim.client.call("Undefine", "s", ["win10"])
    sim.client.wait_for(lambda m: m.member == "InterfacesRemoved" and m.body[0] == path)
    assert not (sim.config_dir / "vgpus.d" / "win10.toml").exists()
    assert not (sim.root / "sys/bus/mdev/devices" / uuid).exists()
    with pytest.raises(CallError) as e:
        sim.client.call("Undefine", "s", ["win10"])
    assert e.value.name == ERR + "NotFound"


def _objects_by_getall(sim: Simulation) -> dict[str, dict[str, dict[str, object]]]:
    """What GetManagedObjects must answer, asked another way: the object paths from
    introspection, each interface's properties from Properties.GetAll."""
    out = {}
    for prefix in (names.PARENT_PREFIX, names.VGPU_PREFIX, names.DOMAIN_PREFIX):
        xml = sim.client.call("Introspect", path=prefix,
                              iface="org.freedesktop.DBus.Introspectable")[0]
        for node in ET.fromstring(xml).findall("node"):
            path = f"{prefix}/{node.get('name')}"
            xml = sim.client.call("Introspect", path=path,
                                  iface="org.freedesktop.DBus.Introspectable")[0]
            out[path] = {i.get("name", ""): sim.client.props(path, i.get("name", ""))
                         for i in ET.fromstring(xml).iter("interface")
                         if i.get("name", "").startswith("io.github.gvtd1")}
    return out


def test_managed_objects_follow_every_change(sim: Simulation) -> None:
    """GetManagedObjects answers from a reply built once per change: after an object is
    added, changed or removed it must show exactly what each object says itself."""
    assert sim.client.objects() == _objects_by_getall(sim)
    path = sim.client.define(name="win10", type="i915-GVTg_V5_4", domain="win10")
    sim.client.wait_for(lambda m: m.member == "InterfacesAdded"
                        and m.body[0] == names.domain_path("win10"))
    objects = sim.client.objects()
    assert objects[path][names.VGPU_IFACE]["State"] == "active"
    assert objects == _objects_by_getall(sim)
    sim.client.call("RemoveVGPU", "s", ["win10"])
    objects = sim.client.objects()
    assert objects[path][names.VGPU_IFACE]["State"] == "inactive"
    assert objects == _objects_by_getall(sim)
    sim.client.call("Undefine", "s", ["win10"])
    sim.client.wait_for(lambda m: m.member == "InterfacesRemoved" and m.body[0] == path)
    objects = sim.client.objects()
    assert path not in objects
    assert objects == _objects_by_getall(sim)


def test_state_directory_records_what_gvtd_created(sim: Simulation) -> None:
    sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=UUID)
    assert UUID in (sim.state_dir / "created.json").read_text()

"""A definition as a person or a configuration manager writes it: no uuid. gvtd derives one
from the (emulated) machine id and the name, the same at every load, and never writes it
into the file."""

from __future__ import annotations

import json
from pathlib import Path

from dbus_fast import Variant

from gvtd import names
from gvtd.config import MACHINE_ID_FILE, derived_uuid, uuid_namespace
from gvtd.sim import machine
from harness import DBusDaemon, Simulation

PLAIN = ("<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
         "<name>plain</name><memory>1048576</memory><os><type>hvm</type></os><devices/>"
         "<test:runstate>5</test:runstate></domain>")
HAND = 'type = "i915-GVTg_V5_4"\nstart = "auto"\n'


def expected_uuid(tmp_path: Path, name: str) -> str:
    """The UUID the docs promise, from the emulated laptop's machine id."""
    mid = tmp_path / "emulated-machine-id"
    mid.write_text(machine.MACHINE_ID + "\n")
    return derived_uuid(uuid_namespace(mid), name)


def listed(sim: Simulation) -> dict[str, dict]:
    return {v["name"]: v for v in json.loads(sim.gvt_client("list", "--json", check=True).stdout)}


def creates(sim: Simulation) -> list[str]:
    return [data.strip() for path, data, _ in sim.write_log() if path.endswith("/create")]


def test_hand_written_definition_keeps_its_uuid_and_its_file(dbus: DBusDaemon,
                                                             tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text(f"<node>{PLAIN}</node>")
    (tmp_path / "gvtd.toml").write_text(f'libvirt_uri = "test://{node}"\n')
    (tmp_path / "vgpus.d").mkdir()
    hand = tmp_path / "vgpus.d" / "hand.toml"
    hand.write_text(HAND)
    uuid = expected_uuid(tmp_path, "hand")
    # the simulation's own machine id, not this host's
    assert uuid != derived_uuid(uuid_namespace(MACHINE_ID_FILE), "hand")
    sim = Simulation(dbus, config_dir=tmp_path)
    try:
        v = listed(sim)["hand"]
        assert (v["uuid"], v["state"], v["start"]) == (uuid, "active", "auto")
        assert creates(sim) == [uuid]
        table = sim.gvt_client("list", check=True).stdout
        assert uuid in table
        # the same UUID after a reload, a restart of gvtd and a reboot (which recreates it
        # with that UUID), and the file is still what its author wrote
        sim.client.call("Reload")
        assert listed(sim)["hand"]["uuid"] == uuid
        sim.sim_call("RestartDaemon")
        assert listed(sim)["hand"]["uuid"] == uuid
        sim.sim_call("Reboot")
        assert listed(sim)["hand"]["uuid"] == uuid and creates(sim) == [uuid, uuid]
        assert hand.read_text() == HAND
        assert sorted(p.name for p in hand.parent.iterdir()) == ["hand.toml"]

        # attach puts that UUID into the domain's XML
        opts = {"display": Variant("s", "vnc"), "dry_run": Variant("b", True)}
        change = sim.client.call("AttachVGPU", "ssa{sv}", ["plain", "hand", opts])[0]
        assert f'<address uuid="{uuid}"' in change
        sim.gvt_client("attach", "plain", "hand", "--display", "vnc", check=True)
        if names.domain_path("plain") not in sim.client.objects():
            sim.client.wait_for(lambda m: m.member == "InterfacesAdded"
                                and m.body[0] == names.domain_path("plain"))
        vgpus = sim.client.props(names.domain_path("plain"), names.DOMAIN_IFACE)["VGPUs"]
        assert vgpus == [names.vgpu_path(uuid)]
        assert hand.read_text() == HAND
    finally:
        sim.stop()


def test_define_without_uuid_still_writes_one(sim: Simulation, tmp_path: Path) -> None:
    """Define (gvt-client define) writes a random UUID into the file it creates, so that
    file carries its identity to another machine; a file written by hand may leave it out."""
    sim.gvt_client("define", "made", "--type", "i915-GVTg_V5_8", check=True)
    uuid = listed(sim)["made"]["uuid"]
    text = (sim.config_dir / "vgpus.d" / "made.toml").read_text()
    assert f'uuid = "{uuid}"' in text
    assert uuid != expected_uuid(tmp_path, "made")

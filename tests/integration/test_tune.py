"""`gvt-client tune` over `gvtd --simulate`: the emulated Kaby Lake laptop (4 cores,
8 threads, cpu0+cpu4 siblings) and its win10 domain on libvirt's test driver."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast import Variant

from gvtd import names
from harness import CallError, DBusDaemon, Simulation, plain, tree_snapshot

ERR = names.ERROR_PREFIX


@pytest.fixture
def sim(dbus: DBusDaemon) -> Iterator[Simulation]:
    """The default simulation, once gvtd is connected to its libvirt (after READY)."""
    s = Simulation(dbus)
    try:
        if not s.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["LibvirtConnected"]:
            s.client.wait_for(lambda m: m.member == "PropertiesChanged"
                              and m.path == names.ROOT_PATH
                              and plain(m.body[1]).get("LibvirtConnected") is True)
        yield s
    finally:
        s.stop()


def tune(sim: Simulation, domain: str = "win10", **options: Variant) -> str:
    return sim.client.call("TuneDomain", "sa{sv}", [domain, options])[0]


def split(text: str) -> tuple[str, list[str]]:
    lines = text.splitlines(True)
    return ("".join(x for x in lines if not x.startswith("# warning: ")),
            [x for x in lines if x.startswith("# warning: ")])


def backup(sim: Simulation) -> Path:
    return sim.state_dir / "tune" / "win10.xml"


DRY = Variant("b", True)


def test_dry_run_shows_the_guides_tuning_and_writes_nothing(sim: Simulation) -> None:
    change, warnings = split(tune(sim, dry_run=DRY))
    assert change.startswith("--- win10.xml\n+++ win10.xml (gvtd)\n")
    assert "-  <vcpu placement='static'>4</vcpu>" in change.replace('"', "'")
    added = [line[1:].strip() for line in change.splitlines() if line.startswith("+")]
    # guest core i on host core i+1's siblings: (1,5), (2,6), (3,7); CPU 0's core stays free
    pins = [x for x in added if x.startswith("<vcpupin")]
    assert pins == [f'<vcpupin vcpu="{v}" cpuset="{c}"/>'
                    for v, c in enumerate((1, 5, 2, 6, 3, 7))]
    assert '<topology sockets="1" cores="3" threads="2"/>' in added
    assert '<spinlocks state="on" retries="8191"/>' in added
    assert '<streaming mode="off"/>' in added
    # the test driver accepts every enlightenment (no domain capabilities: by version)
    for feature in ("relaxed", "vapic", "vpindex", "runtime", "synic", "stimer"):
        assert f'<{feature} state="on"/>' in added
    # win10 is Q35 with SPICE but no USB 3 controller or channels
    text = "".join(warnings)
    assert "USB 3" in text and "spice-vdagent" in text and "guest agent" in text
    assert "Q35" not in text
    assert not backup(sim).exists()
    assert split(tune(sim, dry_run=DRY))[0] == change  # nothing was defined


def test_tune_is_idempotent_and_revert_restores_byte_for_byte(sim: Simulation) -> None:
    change, _ = split(tune(sim))
    assert change
    original = backup(sim).read_bytes()
    assert b"<vcpu placement='static'>4</vcpu>" in original
    assert split(tune(sim))[0] == ""  # what libvirt stored is already tuned
    assert split(tune(sim, vcpus=Variant("u", 4), dry_run=DRY))[0]
    assert backup(sim).read_bytes() == original  # a dry run keeps the backup
    back = tune(sim, revert=Variant("b", True))
    assert '+  <vcpu placement="static">4</vcpu>' in back
    assert not backup(sim).exists()
    with pytest.raises(CallError) as e:
        tune(sim, revert=Variant("b", True))
    assert e.value.name == ERR + "NotFound" and "no tune of win10 to revert" in e.value.text
    # tuning again saves what libvirt now holds: exactly the XML from before the first tune
    assert split(tune(sim))[0] == change
    assert backup(sim).read_bytes() == original


def test_vcpus_and_parts(sim: Simulation) -> None:
    change, _ = split(tune(sim, dry_run=DRY, vcpus=Variant("u", 8),
                           first_core=Variant("b", True)))
    assert '+    <vcpupin vcpu="0" cpuset="0"/>' in change
    change, _ = split(tune(sim, dry_run=DRY, cpu=Variant("b", False),
                           hyperv=Variant("b", False)))
    assert "vcpupin" not in change and "hyperv" not in change and "zlib" in change


@pytest.mark.parametrize("options, words", [
    ({"vcpus": Variant("u", 5)}, "must be even"),
    ({"vcpus": Variant("u", 8)}, "CPU 0's core is left to the host"),
    ({"vcpus": Variant("u", 0)}, "out of range"),
    ({"vcpus": Variant("s", "6")}, "Bad option 'vcpus'"),
    ({"vcpus": Variant("b", True)}, "Bad option 'vcpus'"),
    ({"pin": Variant("b", False)}, "Bad option 'pin'"),
    ({"revert": Variant("b", True), "vcpus": Variant("u", 4)}, "no other option"),
    ({"cpu": Variant("b", False), "vcpus": Variant("u", 4)}, "cpu=false"),
])
def test_bad_options_are_named_errors_and_write_nothing(sim: Simulation, options: dict,
                                                        words: str) -> None:
    before = tune(sim, dry_run=DRY)
    state = tree_snapshot(sim.state_dir)
    with pytest.raises(CallError) as e:
        tune(sim, **options)
    assert e.value.name == ERR + "InvalidArgument" and words in e.value.text
    assert tree_snapshot(sim.state_dir) == state
    assert tune(sim, dry_run=DRY) == before


def test_unknown_domain(sim: Simulation) -> None:
    with pytest.raises(CallError) as e:
        tune(sim, "win11")
    assert e.value.name == ERR + "NotFound" and "win11" in e.value.text


def test_gvt_client_tune(sim: Simulation) -> None:
    p = sim.gvt_client("tune", "win10", "--dry-run", "--vcpus", "4", check=True)
    assert p.stdout.startswith("--- win10.xml") and 'cpuset="6"' in p.stdout \
        and 'cpuset="7"' not in p.stdout
    assert "warning: no USB 3 controller" in p.stderr
    p = sim.gvt_client("tune", "win10", check=True)
    assert p.stdout.startswith("Tuned win10")
    p = sim.gvt_client("tune", "win10", check=True)
    assert p.stdout == "win10 is already tuned this way\n"
    p = sim.gvt_client("tune", "win10", "--vcpus", "3")
    assert p.returncode == 1 and "must be even" in p.stderr
    p = sim.gvt_client("tune", "win10", "--revert", check=True)
    assert p.stdout.startswith("Reverted win10")

"""import-mdevctl and export --format mdevctl against the real mdevctl.

mdevctl reads /etc/mdevctl.d and /sys at fixed paths, so it runs in a private mount namespace
(bench/mdevns.py) where the simulator's tree is /sys and a directory of ours is
/etc/mdevctl.d: the definitions are the files `mdevctl define` itself writes, and what
gvt-client exports is read back by `mdevctl list --defined --dumpjson`.
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from gvtd import names
from harness import ROOT, Simulation, tree_snapshot

sys.path.insert(0, str(ROOT / "bench"))
from mdevns import MdevctlNamespace  # noqa: E402

GPU = "0000:00:02.0"
MANUAL = "1b0c4d2e-6f3a-4b5c-8d7e-9f0a1b2c3d4e"
AUTO = "2c1d5e3f-7a4b-4c6d-9e8f-0a1b2c3d4e5f"
LATER = "9e8d7c6b-5a49-4387-a261-504f3e2d1c0b"


@pytest.fixture
def etc(sim: Simulation) -> Path:
    """The simulated host's mdevctl_dir: the directory doctor checks, which gvt-client (the
    stranger) reads as a user reads /etc/mdevctl.d."""
    settings = tomllib.loads((sim.config_dir / "gvtd.toml").read_text())
    return sim.reachable_by_stranger(Path(settings["mdevctl_dir"]))


@pytest.fixture
def mdevctl(sim: Simulation, etc: Path) -> Iterator[MdevctlNamespace]:
    ns = MdevctlNamespace(sim.root / "sys", etc)
    yield ns
    ns.close()


def define_with_mdevctl(ns: MdevctlNamespace) -> None:
    """A manual mdev with two attributes in order, and one mdevctl starts at boot."""
    ns.check(["mdevctl", "define", "-u", MANUAL, "-p", GPU, "-t", "i915-GVTg_V5_8"])
    for name, value in (("zeta", "1"), ("alpha", "two words")):
        ns.check(["mdevctl", "modify", "-u", MANUAL, f"--addattr={name}", f"--value={value}"])
    ns.check(["mdevctl", "define", "-u", AUTO, "-p", GPU, "-t", "i915-GVTg_V5_8", "--auto"])


def dump(ns: MdevctlNamespace) -> list[object]:
    return json.loads(ns.check(["mdevctl", "list", "--defined", "--dumpjson"]).stdout)


def test_dry_run_then_import_keeps_mdevctls_auto_ones_unless_taken_over(
        sim: Simulation, etc: Path, mdevctl: MdevctlNamespace) -> None:
    define_with_mdevctl(mdevctl)
    before = tree_snapshot(sim.config_dir)
    p = sim.gvt_client("import-mdevctl", "--dir", str(etc), "--dry-run", check=True)
    assert f"would import {MANUAL} (i915-GVTg_V5_8 on {GPU}, mdevctl start manual) as " \
           f"mdev-{MANUAL[:8]}, start manual" in p.stdout
    assert f"skipped {AUTO}" in p.stdout and "never starts a UUID mdevctl auto-starts" in p.stdout
    assert tree_snapshot(sim.config_dir) == before and sim.client.vgpus() == {}

    sim.gvt_client("import-mdevctl", "--dir", str(etc), check=True)
    v = sim.client.vgpus()
    assert set(v) == {f"mdev-{MANUAL[:8]}"}
    m = v[f"mdev-{MANUAL[:8]}"]
    assert (m["UUID"], m["Parent"], m["Type"], m["Start"], m["State"],
            [list(a) for a in m["Attrs"]]) == \
        (MANUAL, GPU, "i915-GVTg_V5_8", "manual", "inactive",
         [["zeta", "1"], ["alpha", "two words"]])
    doctor = {c["id"]: c for c in json.loads(sim.gvt_client("doctor", "--json").stdout)}
    assert doctor["mdevctl"]["severity"] == "pass"

    mdevctl.check(["mdevctl", "start", "-u", AUTO])  # running when gvtd takes it over
    sim.client.wait_for(lambda m: m.member == "InterfacesAdded"
                        and m.body[0] == names.vgpu_path(AUTO))
    p = sim.gvt_client("import-mdevctl", "--dir", str(etc), "--take-over", check=True)
    assert f"{MANUAL} (i915-GVTg_V5_8 on {GPU}, mdevctl start manual): already defined in " \
           f"gvtd as mdev-{MANUAL[:8]}" in p.stdout
    assert f"mdevctl undefine --uuid {AUTO}" in p.stdout
    a = sim.client.vgpus()[f"mdev-{AUTO[:8]}"]
    # mdevctl's running mdev, taken over: gvtd's to remove from now on
    assert (a["Start"], a["State"], a["Managed"], a["Origin"]) == \
        ("auto", "active", True, "taken-over")
    # both tools would now create it at boot, until mdevctl lets go of it
    doctor = {c["id"]: c for c in json.loads(sim.gvt_client("doctor", "--json").stdout)}
    assert doctor["mdevctl"]["severity"] == "fail" and AUTO in doctor["mdevctl"]["message"]
    mdevctl.check(["mdevctl", "undefine", "-u", AUTO])
    sim.client.call("Reload")  # mdevctl's files send no event: doctor's answer stood
    doctor = {c["id"]: c for c in json.loads(sim.gvt_client("doctor", "--json").stdout)}
    assert doctor["mdevctl"]["severity"] == "pass"
    sim.client.call("Undefine", "s", [f"mdev-{AUTO[:8]}"])  # taken over: removed with it
    assert not (sim.root / "sys/bus/mdev/devices" / AUTO).exists()


def test_export_is_what_mdevctl_defined(sim: Simulation, etc: Path,
                                        mdevctl: MdevctlNamespace) -> None:
    define_with_mdevctl(mdevctl)
    original = dump(mdevctl)
    written = {p.name: p.read_bytes() for p in etc.glob(f"{GPU}/*")}
    sim.gvt_client("import-mdevctl", "--dir", str(etc), "--take-over", check=True)
    # printed, it is mdevctl's own listing
    assert json.loads(sim.gvt_client("export", "--format", "mdevctl", check=True).stdout) \
        == original
    # as files, mdevctl reads them back as it wrote them, to the byte
    out = sim.home / "exported"  # where gvt-client, the stranger, may write
    p = sim.gvt_client("export", "--format", "mdevctl", "--dir", str(out), check=True)
    assert "Exported 2 definitions" in p.stdout and "auto-starts the 1" in p.stdout
    assert {p.name: p.read_bytes() for p in out.glob(f"{GPU}/*")} == written
    with MdevctlNamespace(sim.root / "sys", out) as ns:
        assert dump(ns) == original
    # again: the same files are left alone; another definition under a UUID is refused
    assert "(2 already there)" in sim.gvt_client(
        "export", "--format", "mdevctl", "--dir", str(out), check=True).stdout
    (out / GPU / MANUAL).write_text('{"mdev_type": "i915-GVTg_V5_4", "start": "manual"}')
    sim.gvt_client("define", "later", "--type", "i915-GVTg_V5_8", "--parent", GPU, "--uuid",
                   LATER, "--start", "on-demand", check=True)
    before = tree_snapshot(out)
    p = sim.gvt_client("export", "--format", "mdevctl", "--dir", str(out))
    assert p.returncode == 1 and f"{out / GPU / MANUAL} already exists" in p.stderr
    assert tree_snapshot(out) == before


def test_a_bad_file_or_a_refused_define_imports_nothing(
        sim: Simulation, etc: Path, mdevctl: MdevctlNamespace) -> None:
    mdevctl.check(["mdevctl", "define", "-u", MANUAL, "-p", GPU, "-t", "i915-GVTg_V5_4"])
    # a type the GPU does not have: mdevctl defines it anyway, the daemon refuses it
    mdevctl.check(["mdevctl", "define", "-u", LATER, "-p", GPU, "-t", "i915-GVTg_V5_3"])
    before = tree_snapshot(sim.config_dir)
    p = sim.gvt_client("import-mdevctl", "--dir", str(etc))
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert str(etc / GPU / LATER) in p.stderr and "i915-GVTg_V5_3" in p.stderr
    assert "Nothing was imported" in p.stderr
    assert sim.client.vgpus() == {} and tree_snapshot(sim.config_dir) == before

    mdevctl.check(["mdevctl", "undefine", "-u", LATER])
    (etc / GPU / LATER).write_text("{not json")
    p = sim.gvt_client("import-mdevctl", "--dir", str(etc))
    assert p.returncode == 1 and f"{etc / GPU / LATER}: not JSON" in p.stderr
    assert sim.client.vgpus() == {} and tree_snapshot(sim.config_dir) == before
    p = sim.gvt_client("import-mdevctl", "--dir", str(etc / "nowhere"))
    assert p.returncode == 1 and "does not exist" in p.stderr and "--dir" in p.stderr

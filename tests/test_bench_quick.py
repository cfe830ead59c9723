"""`bench/run.py --quick` must keep producing every figure, and gvtd and mdevctl must agree.

The benchmarks drive the simulator, mdevctl, systemd-tmpfiles and driverctl (in private
mount namespaces) and gvt-client; a change to any of them that breaks a benchmark shows up
here rather than at the next `make bench`. Nothing here looks at how fast anything was: only
that each figure exists, has samples, that the agreement checks found the same mdevs in
every view, and that the VFs ended on vfio-pci with only the tmpfiles.d way letting a host
driver bind them first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Every figure bench/run.py reports, by a part of its name that does not depend on the mode.
EXPECTED = [
    "start to READY=1, 8 auto vGPUs recreated",
    "start to READY=1, 8 vGPUs already present",
    "gvt-client list --json (8 vGPUs)",
    "daemon RSS after start",
    "uevent -> InterfacesAdded on a client",
    "MDEV_STATE=registered -> 8 auto vGPUs active",
    "CPU time",
    "times scheduled",
    "mdevctl start -u, 8 devices",
    "gvt-client create, 8 vGPUs",
    "mdevctl start-parent-mdevs, 8 auto",
    "gvtd start to READY=1, 8 auto recreated",
    "mdevctl list (8 mdevs)",
    "gvt-client list (8 vGPUs)",
    "mdevctl types",
    "gvt-client types",
    "paced: 2 at a time until gvtd shows them",
    "mdevs on 2 parents created",
    "foreign)",
    "own)",
    "GetManagedObjects round trip",
    "plain copy of the tree",
    "gvtd full sysfs read",
    "GetId, 4 clients: rate",
    "GetManagedObjects (64 vGPUs), 4 clients: rate",
    "GetId, 4 clients: latency",
    "GetManagedObjects (64 vGPUs), 4 clients: latency",
    "under cProfile: rate",
    "soak: RSS slope",
    "soak: open fd slope",
    "soak: unexpected errors",
    "StartDomain, real libvirtd",
    "libvirt-python create(), same domain",
    "StartDomain, test:/// driver",
    "GVT-g kernel message -> Health PropertiesChanged on a client",
    "unrelated kernel records: gvtd's CPU time",
    "tmpfiles.d + driverctl: PF driver bound -> 7 VFs on vfio-pci",
    "tmpfiles.d + driverctl: VFs bound to a host driver on the way",
    "gvtd: PF driver bound -> 7 VFs on vfio-pci",
    "gvtd: VFs bound to a host driver on the way",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick",
                           "--json", str(out / "figures.json"), "--out", str(out / "bench.md")],
                          capture_output=True, text=True, timeout=340)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(sections=json.loads((out / "figures.json").read_text()),
                markdown=(out / "bench.md").read_text())


@pytest.mark.timeout(360)
def test_every_figure_is_produced(report: dict[str, object]) -> None:
    sections = report["sections"]
    assert isinstance(sections, list)
    figures = [f for s in sections for f in s["figures"]]
    names = [f["name"] for f in figures]
    missing = [e for e in EXPECTED if not any(e in n for n in names)]
    assert not missing, f"figures no longer produced: {missing}"
    assert all(f["n"] >= 1 and f["median"] == f["median"] for f in figures)
    # every side-by-side figure of gvtd has its mdevctl counterpart as the baseline
    for f in figures:
        if f["name"].startswith(("gvt-client", "gvtd start")) and "mdevctl" in str(f["baseline"]):
            assert f["ratio"] is not None


@pytest.mark.timeout(360)
def test_gvtd_and_mdevctl_agree(report: dict[str, object]) -> None:
    notes = [n for s in report["sections"] for n in s["notes"]]  # type: ignore[union-attr]
    assert not [n for n in notes if n.startswith(("MISMATCH", "UNEXPECTED"))]
    mdevctl = next(s for s in report["sections"]  # type: ignore[union-attr]
                   if s["title"] == "Side by side with mdevctl")
    agreed = [n for n in mdevctl["notes"] if n.startswith("agree:")]
    assert len(agreed) == 6, notes  # 4 scenarios with 8 mdevs, 2 at scale


@pytest.mark.timeout(360)
def test_sriov_vfs_reach_vfio_pci_and_only_gvtd_spares_the_host_driver(
        report: dict[str, object]) -> None:
    """Both ways end with the 7 VFs on vfio-pci (the benchmark waits for that) and gvtd
    shows them; with autoprobe 1 the tmpfiles.d way lets the PF's driver bind every VF
    first in every round, gvtd never lets it bind one; a tmpfiles.d line that runs before
    the PF's driver leaves no VFs."""
    sriov = next(s for s in report["sections"]  # type: ignore[union-attr]
                 if s["title"].startswith("SR-IOV"))
    figures = {f["name"].strip(" ."): f for f in sriov["figures"]}
    assert figures["gvtd: PF driver bound -> 7 VFs on vfio-pci"]["ratio"] is not None
    assert figures["tmpfiles.d + driverctl: VFs bound to a host driver on the way"]["min"] == 7
    assert figures["gvtd: VFs bound to a host driver on the way"]["max"] == 0
    assert any(n.startswith("agree: gvtd shows its 7 VF vGPUs") for n in sriov["notes"])
    assert any(n.startswith("tmpfiles.d before the PF's driver bound") and "0 VFs" in n
               for n in sriov["notes"])


@pytest.mark.timeout(360)
def test_report_describes_the_machine(report: dict[str, object]) -> None:
    md = report["markdown"]
    assert isinstance(md, str)
    for heading in ("## Results", "## Machine", "| mdevctl |", "| CPU |"):
        assert heading in md

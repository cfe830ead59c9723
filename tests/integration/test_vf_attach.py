"""An SR-IOV VF given to a domain: attach and detach through gvt-client as the stranger, on
the emulated Alder Lake with the libvirt test driver (the real daemon, the SR-IOV backend
writing the hostdev), the reply saying what gives the picture, and the domain then using
the vGPU as gvtd knows it."""

from __future__ import annotations

from dbus_fast import Message

from gvtd import names
from gvtd.virt import domxml
from harness import Simulation
from test_sriov import adl  # noqa: F401 (a fixture)
from test_suspend import last

VF = "0000:00:02.1"
ROM = "/usr/share/common-licenses/GPL-3"  # base-files: root's, 0644, under /usr/share
HOSTDEV = ('+    <hostdev mode="subsystem" type="pci" managed="no">',
           '+        <address domain="0x0000" bus="0x00" slot="0x02" function="0x1"/>')


def uses(sim: Simulation, domain: str, vgpu: str, after: Message | None) -> bool:
    """Whether the domain uses vgpu once a signal after `after` said something of the
    domain (libvirt's event after the define reached gvtd)."""
    dom = names.domain_path(domain)
    sim.client.wait_for(lambda m: m.path == dom or bool(m.body) and m.body[0] == dom,
                        after=after)
    objects = sim.client.objects()
    return dom in objects and vgpu in objects[dom][names.DOMAIN_IFACE]["VGPUs"]


def test_attach_and_detach_a_vf(adl: Simulation) -> None:  # noqa: F811
    adl.client.define(name="win11", type="vf")  # start auto: its VF exists
    path = names.vgpu_path(adl.client.vgpus()["win11"]["UUID"])
    dry = adl.gvt_client("attach", "win10", "win11", "--no-audio", "--dry-run", check=True)
    lines = dry.stdout.splitlines()
    assert all(x in lines for x in HOSTDEV), dry.stdout
    assert not [x for x in lines if x[:1] in "+-" and any(
        w in x for w in ("display=", "ramfb", "qemu:", "<graphics", "<gl"))]
    assert lines[-1] == f"Display: {domxml.PICTURE}"
    mark = last(adl)
    p = adl.gvt_client("attach", "win10", "win11", "--no-audio", "--rom", ROM, check=True)
    assert p.stdout.splitlines() == ["Attached win11 to win10 (a VF)",
                                     f"Display: {domxml.PICTURE}"]
    # the domain uses the vGPU now: its hostdev names the VF's address (used_in)
    assert uses(adl, "win10", path, mark)
    again = adl.gvt_client("attach", "win10", "win11", "--no-audio", "--rom", ROM,
                           "--dry-run", check=True)
    assert again.stdout.startswith("win10 already has win11 attached this way.")
    bar = adl.gvt_client("attach", "win10", "win11", "--no-audio", "--no-rom-bar",
                         "--dry-run", check=True).stdout.splitlines()
    assert [x for x in bar if x[:1] in "+-" and "rom" in x] == \
        [f'-      <rom file="{ROM}"/>', '+      <rom bar="off"/>']
    mark = last(adl)
    adl.gvt_client("detach", "win10", "win11", check=True)
    assert not uses(adl, "win10", path, mark)
    after = adl.gvt_client("attach", "win10", "win11", "--no-audio", "--dry-run", check=True)
    assert all(x in after.stdout.splitlines() for x in HOSTDEV)  # gone: it would be added


def test_an_mdev_option_for_a_vf_says_what_gives_the_picture(adl: Simulation) -> None:  # noqa: F811
    adl.client.define(name="win11", type="vf")  # start auto: its VF exists
    for flags in (["--display", "spice-gl"], ["--display", "gtk-gl"], ["--x-display", ":1"]):
        p = adl.gvt_client("attach", "win10", "win11", "--no-audio", *flags)
        assert p.returncode == 1, flags
        assert "Looking Glass" in p.stderr and "RDP" in p.stderr and "Sunshine" in p.stderr
    p = adl.gvt_client("attach", "win10", "win11", "--no-audio", "--rom", "/etc/passwd")
    assert p.returncode == 1 and "is not under /usr/share" in p.stderr
    p = adl.gvt_client("attach", "win10", "win11", "--no-audio", "--dry-run", check=True)
    assert all(x in p.stdout.splitlines() for x in HOSTDEV)  # nothing was written


def test_doctor_lints_the_hostdev_of_a_vf_that_is_not_made_now(adl: Simulation) -> None:  # noqa: F811
    """A VF released with its vGPU (the count back to 0) is still a VF gvtd knows: its
    hostdev, in a domain gvtd shows (it uses the vGPU), is no finding."""
    adl.client.define(name="win11", type="vf", start="manual")
    adl.gvt_client("create", "win11", check=True)
    adl.gvt_client("attach", "win10", "win11", "--no-audio", check=True)
    adl.gvt_client("remove", "win11", check=True)
    assert not (adl.root / "sys/bus/pci/devices" / VF).exists()
    assert names.domain_path("win10") in adl.client.objects()
    findings = [c for c in adl.client.call("Diagnose")[0] if c[0].startswith("domain:win10:")]
    assert findings == []


def test_an_on_demand_vf_is_attached_before_it_was_ever_made(adl: Simulation) -> None:  # noqa: F811
    """Define gives it its VF's address: attach writes it with the domain off and no VF."""
    adl.client.define(name="win11", type="vf", start="on-demand", domain="win10")
    assert adl.client.vgpus()["win11"]["State"] == "inactive"
    p = adl.gvt_client("attach", "win10", "win11", "--no-audio", check=True)
    assert p.stdout.splitlines()[0] == "Attached win11 to win10 (a VF)"
    assert not (adl.root / "sys/bus/pci/devices" / VF).exists()
    adl.client.call("StartDomain", "sa{sv}", ["win10", {}])
    assert adl.client.vgpus()["win11"]["Address"] == VF  # the VF the XML names was made

"""AttachVGPU's options: each key's type, and for an SR-IOV VF its ROM and the refusal of an
mdev's display options, which says what gives a VF's picture."""

import asyncio

import pytest

from gvtd.backend import HostdevOptions
from gvtd.domains import AttachOptions, _vf_options, attach_options
from gvtd.errors import InvalidArgument, NotFound
from gvtd.virt import domxml
from gvtd.reconcile import VgpuView

VF = "0000:00:02.1"
PUBLIC = "/usr/share/common-licenses/GPL-3"


def test_nothing_asked_is_the_defaults() -> None:
    assert attach_options({}) == AttachOptions()
    opts = attach_options({"display": "gtk-gl", "x_display": ":1", "dry_run": True,
                           "audio": False, "rom": "/usr/share/kvm/igd.rom", "rom_bar": True})
    assert (opts.display, opts.x_display, opts.dry_run, opts.audio, opts.rom, opts.rom_bar) \
        == ("gtk-gl", ":1", True, False, "/usr/share/kvm/igd.rom", True)


@pytest.mark.parametrize("options", [{"rom": True}, {"rom_bar": "off"}, {"display": 1},
                                     {"romfile": "/x"}, {"dry_run": "yes"}])
def test_a_wrong_key_or_type_names_every_option(options: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match="rom \\(s: a ROM file for a VF\\), rom_bar"):
        attach_options(options)


def test_x_display_is_an_x_display() -> None:
    with pytest.raises(InvalidArgument, match="not an X display"):
        attach_options({"x_display": "host:0"})


def view(address: str = VF) -> VgpuView:
    return VgpuView("fff6f017-3417-4ad3-b05e-17ae3e1a4615", "win11", "0000:00:02.0", "vf",
                    "active", "auto", "win11", True, "", backend="sriov", address=address)


def vf_spec(**options: object) -> HostdevOptions:
    """What the SR-IOV backend is asked to write for AttachVGPU's options."""
    return asyncio.run(_vf_options(view(), attach_options(options)))


def test_a_vfs_rom_and_rom_bar() -> None:
    assert vf_spec() == HostdevOptions()
    assert vf_spec(rom_bar=False) == HostdevOptions(rom_bar=False)
    assert vf_spec(rom=PUBLIC) == HostdevOptions(rom=PUBLIC)
    with pytest.raises(InvalidArgument, match="either rom or rom_bar false"):
        vf_spec(rom=PUBLIC, rom_bar=False)
    with pytest.raises(InvalidArgument, match="not under /usr/share"):
        vf_spec(rom="/etc/shadow")
    with pytest.raises(NotFound):
        vf_spec(rom="/usr/share/no-such.rom")


@pytest.mark.parametrize("options", [{"display": "spice-gl"}, {"display": "gtk-gl"},
                                     {"x_display": ":0"}])
def test_an_mdev_display_option_for_a_vf_says_what_gives_its_picture(
        options: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument) as e:
        vf_spec(**options)
    assert str(e.value).endswith(domxml.PICTURE)
    assert all(w in domxml.PICTURE for w in ("Looking Glass", "RDP", "Sunshine"))


def test_no_vgpu_display_is_what_a_vf_has() -> None:
    assert vf_spec(display="none") == vf_spec(display="vnc") == HostdevOptions()


def test_a_vf_without_an_address_says_so() -> None:
    with pytest.raises(InvalidArgument, match="win11 has no VF address yet"):
        asyncio.run(_vf_options(view(""), attach_options({})))

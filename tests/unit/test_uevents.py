"""What each kernel event asks gvtd to re-read (gvtd.udev.classify)."""

import pytest

from gvtd.udev import Uevent, classify

GPU = "/sys/devices/pci0000:00/0000:00:02.0"
UUID = "4b20d080-1b54-4048-85b3-a6a62d165c01"


@pytest.mark.parametrize("action", ["add", "remove", "change"])
def test_an_mdev_event_rereads_the_mdev_and_its_parent(action: str) -> None:
    assert classify(action, "mdev", f"{GPU}/{UUID}", {}) == \
        Uevent(action, frozenset({"0000:00:02.0"}), UUID)


@pytest.mark.parametrize("action", ["bind", "unbind"])
def test_an_mdev_driver_binding_rereads_nothing(action: str) -> None:
    """They come between an mdev's add and remove and change nothing gvtd reads."""
    assert classify(action, "mdev", f"{GPU}/{UUID}", {"DRIVER": "intel_vgpu_mdev"}) is None


def test_events_of_other_devices_are_ignored() -> None:
    assert classify("add", "vfio-dev", f"{GPU}/{UUID}/vfio-dev/vfio0", {}) is None
    assert classify("add", "mdev", f"{GPU}/not-a-uuid", {}) is None


def test_a_parent_registering_rereads_the_parent() -> None:
    assert classify("change", "pci", GPU, {"MDEV_STATE": "registered"}) == \
        Uevent("change registered", frozenset({"0000:00:02.0"}))

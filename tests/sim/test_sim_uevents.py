"""uevents as a pyudev monitor in a preloaded child receives them, in the kernel's order."""

from __future__ import annotations

from typing import Any

from conftest import HostProc, Monitor, write

GPU = "/devices/pci0000:00/0000:00:02.0"
TYPES = f"{GPU}/mdev_supported_types"
U1 = "11111111-2222-3333-4444-555555555555"


def brief(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["action"], e["devpath"], e["subsystem"]) for e in events]


def test_create_and_remove(host: HostProc, monitor: Monitor) -> None:
    assert write(host.sys(f"{TYPES}/i915-GVTg_V5_4/create"), U1.upper() + "\n") == "ok"
    # The write has returned: its events were sent before it did.
    add, vfio, bind = events = monitor.events(3)
    mdev, vdev = f"{GPU}/{U1}", f"{GPU}/{U1}/vfio-dev/vfio0"
    assert brief(events) == [("add", mdev, "mdev"), ("add", vdev, "vfio-dev"), ("bind", mdev, "mdev")]
    seq = [int(e["props"].pop("SEQNUM")) for e in events]
    assert seq == sorted(seq)
    assert add["props"] == {"ACTION": "add", "DEVPATH": mdev, "SUBSYSTEM": "mdev"}  # no MDEV_TYPE
    assert vfio["props"] == {"ACTION": "add", "DEVPATH": vdev, "SUBSYSTEM": "vfio-dev"}
    assert bind["props"] == {"ACTION": "bind", "DEVPATH": mdev, "SUBSYSTEM": "mdev", "DRIVER": "intel_vgpu_mdev"}

    assert write(host.sys(f"{GPU}/{U1}/remove"), "1\n") == "ok"
    events = monitor.events(3)
    assert brief(events) == [("remove", vdev, "vfio-dev"), ("unbind", mdev, "mdev"), ("remove", mdev, "mdev")]
    assert "DRIVER" not in events[1]["props"] and "DRIVER" not in events[2]["props"]


def test_failed_probe_adds_then_removes(host: HostProc, monitor: Monitor) -> None:
    """GVT-g refuses in its probe, after the mdev core added the device: add, then remove."""
    assert write(host.sys(f"{TYPES}/i915-GVTg_V5_1/create"), U1) == "ENOSPC"
    assert brief(monitor.events(2)) == [("add", f"{GPU}/{U1}", "mdev"), ("remove", f"{GPU}/{U1}", "mdev")]
    assert write(host.sys(f"{TYPES}/i915-GVTg_V5_8/create"), "bad") == "EINVAL"  # nothing sent
    uuid = host.call("add_foreign_mdev", "0000:00:02.0", "i915-GVTg_V5_8")
    assert [e["action"] for e in monitor.events(3)] == ["add", "add", "bind"]
    assert host.call("mdevs") == [[uuid, "0000:00:02.0", "i915-GVTg_V5_8"]]


def test_unregister_and_register(host: HostProc, monitor: Monitor) -> None:
    uuid = host.call("add_foreign_mdev", "0000:00:02.0", "i915-GVTg_V5_8")
    monitor.events(3)
    host.call("unregister_parent", "0000:00:02.0")
    events = monitor.events(4)
    assert brief(events) == [
        ("remove", f"{GPU}/{uuid}/vfio-dev/vfio0", "vfio-dev"),
        ("unbind", f"{GPU}/{uuid}", "mdev"),
        ("remove", f"{GPU}/{uuid}", "mdev"),
        ("change", GPU, "pci"),
    ]
    change = events[3]["props"]
    assert change["MDEV_STATE"] == "unregistered" and change["DRIVER"] == "i915"
    assert change["PCI_SLOT_NAME"] == "0000:00:02.0"
    assert "MDEV_STATE" not in host.sys(f"{GPU}/uevent").read_text()  # only while sending

    host.call("register_parent", "0000:00:02.0")
    (event,) = monitor.events(1)
    assert (event["action"], event["props"]["MDEV_STATE"]) == ("change", "registered")
    assert host.sys(f"{TYPES}/i915-GVTg_V5_8/available_instances").read_text() == "2\n"


def test_reboot_is_silent(host: HostProc, monitor: Monitor) -> None:
    host.call("add_foreign_mdev", "0000:00:02.0", "i915-GVTg_V5_4")
    monitor.events(3)
    host.call("forget_mdevs")
    assert host.call("mdevs") == [] and list(host.sys("/bus/mdev/devices").iterdir()) == []
    # The next event the monitor gets is the next one sent: forgetting sent none.
    assert write(host.sys(f"{GPU}/uevent"), "change\n") == "ok"  # a synthetic uevent
    (event,) = monitor.events(1)
    assert (event["action"], event["devpath"]) == ("change", GPU)
    uuid = host.call("add_foreign_mdev", "0000:00:02.0", "i915-GVTg_V5_4")
    assert monitor.events(2)[1]["devpath"] == f"{GPU}/{uuid}/vfio-dev/vfio0"  # numbering restarts


def test_sample_parent(make_host: type[HostProc]) -> None:
    host = make_host("mtty")
    monitor = Monitor(host)
    try:
        mtty = "/devices/virtual/mtty/mtty"
        assert write(host.sys(f"{mtty}/mdev_supported_types/mtty-2/create"), U1 + "\n") == "ok"
        events = monitor.events(3)
        assert brief(events)[0] == ("add", f"{mtty}/{U1}", "mdev")
        assert events[2]["props"]["DRIVER"] == "mtty"
        host.call("unregister_parent", "mtty")
        assert [e["action"] for e in monitor.events(4)] == ["remove", "unbind", "remove", "change"]
    finally:
        monitor.close()

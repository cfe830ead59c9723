"""gvt-client shows a vGPU's backend and address, and a parent's kind and VF counts, only
where they say more than "an mdev": an mdev host's output stays as it was."""

from typing import Any

from gvtd import names
from gvtd.client.main import _parents, _vgpus

UUID = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"


def _vgpu(**extra: Any) -> dict[str, Any]:
    return {"Name": "w", "UUID": UUID, "Parent": "0000:00:02.0", "Type": "vf",
            "State": "active", "Start": "auto", "Domain": "", "Managed": True,
            "Origin": "created", "LastError": "", "Health": "ok", "HealthMessage": "",
            "HealthTime": 0, **extra}


def _parent(**extra: Any) -> dict[str, Any]:
    return {"Address": "0000:00:02.0", "Driver": "i915", "Model": "8086:46a6",
            "Platform": "", "Registered": True, "Types": [], **extra}


def test_mdev_fields_are_left_out() -> None:
    (v,) = _vgpus({"/v": {names.VGPU_IFACE: _vgpu(Backend="mdev", Address="")}})
    assert "backend" not in v and "address" not in v
    (p,) = _parents({"/p": {names.PARENT_IFACE: _parent(Kind="mdev", TotalVFs=0, NumVFs=0)}})
    assert not {"kind", "total_vfs", "num_vfs"} & set(p)


def test_another_backend_s_fields_are_shown() -> None:
    (v,) = _vgpus({"/v": {names.VGPU_IFACE: _vgpu(Backend="sriov", Address="0000:00:02.1")}})
    assert (v["backend"], v["address"]) == ("sriov", "0000:00:02.1")
    (p,) = _parents({"/p": {names.PARENT_IFACE: _parent(Kind="sriov", TotalVFs=7,
                                                        NumVFs=2)}})
    assert (p["kind"], p["total_vfs"], p["num_vfs"]) == ("sriov", 7, 2)

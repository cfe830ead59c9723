"""A vGPU's health from GVT-g's kernel messages: the emulated kernel prints them into its
/dev/kmsg, gvtd follows it on its loop, and the vGPU, Problems and the CLI show them."""

import json
import tomllib
from pathlib import Path

from dbus_fast import Message

from gvtd import names
from harness import Simulation, plain

U = "6a0c5e1e-2f57-4b9e-8d53-9c1f0b7e2a11"
U2 = "0e4b3f7c-8a1d-4d2e-9f60-5b7c1a2d3e4f"
KERN, USER = 0, 1
ERR, INFO = 3, 6


def kernel_says(sim: Simulation, text: str, uuid: str = "", level: int = ERR,
                facility: int = KERN) -> int:
    return sim.sim_call("KernelMessage", "ssuu", [uuid, text, level, facility])[0]


def health_changed(sim: Simulation, uuid: str, health: str, after: Message | None = None) -> dict:
    msg = sim.client.wait_for(lambda m: _is_health(m, uuid, health), after=after)
    return plain(msg.body[1])


def _is_health(m: Message, uuid: str, health: str) -> bool:
    return m.member == "PropertiesChanged" and m.path == names.vgpu_path(uuid) \
        and m.body[0] == names.VGPU_IFACE and "Health" in m.body[1] \
        and m.body[1]["Health"].value == health


def vgpu_id(sim: Simulation, uuid: str) -> int:
    return int((sim.root / "sys/bus/mdev/devices" / uuid / "intel_vgpu/vgpu_id").read_text())


def problems(sim: Simulation) -> dict[str, list[str]]:
    p = sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["Problems"]
    return {row[0]: row for row in p}


def test_unknown_gvt_message_makes_its_vgpu_degraded(sim: Simulation) -> None:
    sim.client.define(name="win10", type="i915-GVTg_V5_8", uuid=U, domain="win10")
    sim.client.define(name="other", type="i915-GVTg_V5_8", uuid=U2)
    assert vgpu_id(sim, U) != vgpu_id(sim, U2)
    kernel_says(sim, "fail to emulate MMIO read 00064320", uuid=U)
    changed = health_changed(sim, U, "degraded")
    assert "fail to emulate MMIO read 00064320" in changed["HealthMessage"]
    assert changed["HealthTime"] > 0
    vgpus = sim.client.vgpus()
    assert vgpus["other"]["Health"] == "ok"  # attributed by GVT-g's id, to its own mdev
    row = problems(sim)["health:win10"]
    assert row[1] == "warn" and "fail to emulate MMIO read" in row[2]


def test_failsafe_mode_with_its_reason(sim: Simulation) -> None:
    sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U)
    kernel_says(sim, "Detected your guest driver doesn't support GVT-g.")
    kernel_says(sim, f"Now vgpu {vgpu_id(sim, U)} will enter failsafe mode.")
    changed = health_changed(sim, U, "failed")
    assert "does not support GVT-g" in changed["HealthMessage"]
    row = problems(sim)["health:win10"]
    assert row[1] == "error" and "Intel graphics driver" in row[3]
    assert sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["State"] == "degraded"


def test_only_the_kernels_own_records_count(sim: Simulation) -> None:
    """What a process writes into /dev/kmsg (facility user, even with a "<3>" prefix) and
    what the kernel prints below error level (a process name before "segfault") are never
    taken for GVT-g's; the kernel's own record after them is."""
    sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U)
    n = vgpu_id(sim, U)
    kernel_says(sim, "Detected your guest driver doesn't support GVT-g.", facility=USER)
    kernel_says(sim, f"Now vgpu {n} will enter failsafe mode.", facility=USER)
    kernel_says(sim, "Detected your guest driver doesn't support GVT-g.", level=INFO)
    kernel_says(sim, f"Now vgpu {n} will enter failsafe mode.", level=INFO)
    kernel_says(sim, f"gvt: vgpu {n}: the kernel's own")
    # a failsafe entry taken for real would have made it failed, and the unknown message
    # after it would not show
    changed = health_changed(sim, U, "degraded")
    assert "the kernel's own" in changed["HealthMessage"]
    assert sim.client.vgpus()["win10"]["Health"] == "degraded"


def test_unknown_messages_are_rate_limited(sim: Simulation) -> None:
    sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U)
    for i in range(40):
        kernel_says(sim, f"unknown thing {i}", uuid=U)
    kernel_says(sim, "Detected your guest driver doesn't support GVT-g.")
    kernel_says(sim, f"Now vgpu {vgpu_id(sim, U)} will enter failsafe mode.")
    health_changed(sim, U, "failed")  # everything before it was handled
    shown = [m.body[1]["HealthMessage"].value for m in sim.client.signals
             if m.member == "PropertiesChanged" and m.path == names.vgpu_path(U)
             and "HealthMessage" in m.body[1]]
    unknown = [t for t in shown if "unknown thing" in t]
    assert unknown and len(unknown) <= 5  # one change per batch read, never one per line
    # the fifth was the last one shown: the 35 after it were counted, not shown
    assert "unknown thing 4\"" in unknown[-1]


def test_restart_reports_no_old_message_again(sim: Simulation) -> None:
    """A failsafe entry handled before the restart is not shown again after it: were it,
    the vGPU would be failed and the unknown message after the restart would not show."""
    sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U)
    kernel_says(sim, "Detected your guest driver doesn't support GVT-g.")
    seq = kernel_says(sim, f"Now vgpu {vgpu_id(sim, U)} will enter failsafe mode.")
    health_changed(sim, U, "failed")
    cursor = sim.state_dir / "kmsg-cursor.json"
    sim.sim_call("RestartDaemon")
    assert json.loads(cursor.read_text())["seq"] == seq  # written before gvtd stopped
    last = sim.client.signals[-1]
    kernel_says(sim, "fail to emulate MMIO write 00064320", uuid=U)
    changed = health_changed(sim, U, "degraded", after=last)
    assert "MMIO write" in changed["HealthMessage"]
    assert sim.client.vgpus()["win10"]["Health"] == "degraded"


def test_a_new_mdev_with_a_reused_id_starts_healthy(sim: Simulation) -> None:
    sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U)
    n = vgpu_id(sim, U)
    kernel_says(sim, "fail to emulate MMIO read 00064320", uuid=U)
    health_changed(sim, U, "degraded")
    sim.client.call("RemoveVGPU", "s", ["win10"])
    sim.client.call("CreateVGPU", "s", ["win10"])
    assert vgpu_id(sim, U) == n
    assert sim.client.vgpus()["win10"]["Health"] == "ok"
    assert "health:win10" not in problems(sim)


def test_guest_page_write_error_shuts_the_domain_down(sim: Simulation) -> None:
    """With on_guest_fault = "shutdown", the message that precedes a host hang (printed by
    GVT-g without a vGPU id) is the running vGPU's, and its domain is asked to shut down."""
    settings = sim.config_dir / "gvtd.toml"
    settings.write_text(settings.read_text() + 'on_guest_fault = "shutdown"\n')
    sim.client.call("Reload")
    assert tomllib.loads(settings.read_text())["on_guest_fault"] == "shutdown"
    sim.client.define(name="win10", type="i915-GVTg_V5_8", uuid=U, domain="win10")
    sim.client.define(name="idle", type="i915-GVTg_V5_8", uuid=U2)
    sim.client.call("StartDomain", "sa{sv}", ["win10", {}])
    kernel_says(sim, "gvt: guest page write error, gpa 1f2e3000")
    changed = health_changed(sim, U, "failed")
    assert "asked win10 to shut down" in changed["HealthMessage"]
    sim.client.wait_for(lambda m: m.member == "PropertiesChanged"
                        and m.path == names.domain_path("win10")
                        and m.body[1].get("State") is not None
                        and m.body[1]["State"].value == "shut-off")
    assert sim.client.vgpus()["idle"]["Health"] == "ok"


def test_notify_leaves_the_domain_running(sim: Simulation) -> None:
    sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U, domain="win10")
    sim.client.call("StartDomain", "sa{sv}", ["win10", {}])
    kernel_says(sim, "gvt: guest page write error, gpa 1f2e3000")
    changed = health_changed(sim, U, "failed")
    assert "leaves win10 running" in changed["HealthMessage"]
    domain = sim.client.props(names.domain_path("win10"), names.DOMAIN_IFACE)
    assert domain["State"] == "running"


def test_status_and_list_show_health(sim: Simulation) -> None:
    sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U)
    kernel_says(sim, "fail to emulate MMIO read 00064320", uuid=U)
    health_changed(sim, U, "degraded")
    listed = json.loads(sim.gvt_client("list", "--json", check=True).stdout)
    row = next(v for v in listed if v["name"] == "win10")
    assert row["health"] == "degraded" and "MMIO read" in row["health_message"]
    text = sim.gvt_client("list", check=True).stdout
    assert "degraded" in text
    status = sim.gvt_client("status", check=True).stdout
    assert "MMIO read" in status and "degraded" in status


def test_monitor_shows_the_change(sim: Simulation) -> None:
    import subprocess
    import sys

    sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U)
    proc = subprocess.Popen(sim.as_stranger([sys.executable, "-m", "gvtd.client.main",
                                             "--session", "monitor"]),
                            env=sim.stranger_env, cwd=sim.home, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("-- watching"):
                break
        kernel_says(sim, "fail to emulate MMIO read 00064320", uuid=U)
        for line in proc.stdout:
            if "Health ok -> degraded" in line:
                assert line.startswith("vgpu win10: ") and "MMIO read" in line
                break
    finally:
        proc.kill()
        proc.wait()

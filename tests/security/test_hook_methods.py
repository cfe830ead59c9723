"""PrepareDomain and ReleaseDomain are the libvirt hook's, which runs as root: every other
caller is refused, by the shipped bus policy and, where that policy is not loaded, by gvtd's
own gate, even when polkit would grant the domain action (as it did to the active session).

The victim is a running domain's on-demand vGPU: a user's ReleaseDomain must not remove it
from under the VM, and nothing may reach the emulated kernel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gvtd import names
from harness import Simulation
from sysbus import NOBODY, POLKIT, Monitor, SystemBus, policed, run_caller

HOOK_METHODS = ["ReleaseDomain", "PrepareDomain"]


@pytest.fixture(params=[True, False], ids=["bus-policy", "gate"])
def running(request: pytest.FixtureRequest) -> Iterator[tuple[SystemBus, Simulation]]:
    """win10 running with its on-demand vGPU `od`, polkit granting every action."""
    with policed(shipped=request.param) as (bus, sim, polkit):
        polkit.allow([names.ACTION_MANAGE, names.ACTION_VGPU, names.ACTION_DOMAIN])
        sim.client.define(name="od", type="i915-GVTg_V5_8", start="on-demand", domain="win10")
        sim.client.call("StartDomain", "sa{sv}", ["win10", {}])
        assert sim.client.vgpus()["od"]["State"] == "active"
        yield bus, sim


def test_only_root_may_call_the_hook_methods(running: tuple[SystemBus, Simulation]) -> None:
    bus, sim = running
    before = sim.write_log()
    monitor = Monitor(bus.address, [
        f"type='method_call',destination='{POLKIT}',member='CheckAuthorization'"])
    try:
        report = run_caller(bus.address, "od", [*HOOK_METHODS, "Reload"], uid=NOBODY)
        # Reload does ask polkit: once its question is seen, any question the hook methods
        # had caused would have been seen before it.
        seen = monitor.wait_calls(1)
    finally:
        monitor.close()
    outcome = {m: (err, text) for m, err, text in report["results"]}
    for m in HOOK_METHODS:
        err, text = outcome[m]
        assert err == names.ACCESS_DENIED, (m, outcome[m])
        if "open.conf" in bus.config.read_text():  # gvtd's gate refused it, and says why
            assert f"Not authorized to call {m} (you are uid {NOBODY}): only root" in text
            assert "gvt-client start" in text
        else:  # the bus refused it before gvtd saw it
            assert "Rejected send message" in text, text
    assert outcome["Reload"] == ("", "")
    assert [msg.body[1] for msg in seen] == [names.ACTION_MANAGE]  # never asked for them
    assert sim.write_log() == before
    assert sim.client.vgpus()["od"]["State"] == "active"


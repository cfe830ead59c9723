"""gvtd killed (SIGKILL) at each step of a create, a remove and a Define: after the restart
there is exactly one mdev per definition, none leaked, none created twice, and every file is
the old one or the new one, never partial."""

import asyncio
import json
import subprocess
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType, Variant

from gvtd import names
from gvtd.config import Definition
from harness import WATCHDOG, WATCHDOG_SEC, CallError, Simulation, keeps_answering, plain

U = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"
U2 = "1b8f3a52-9a50-4c1e-8d6e-0c2b7a4e5f61"


def restarted(sim: Simulation) -> None:
    """Wait until gvtd owns its name again: it takes the name only after reconciling."""
    sim.client.call("AddMatch", "s", ["type='signal',sender='org.freedesktop.DBus',"
                                      f"member='NameOwnerChanged',arg0='{names.BUS_NAME}'"],
                    dest="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                    iface="org.freedesktop.DBus")
    sim.client.wait_for(lambda m: m.member == "NameOwnerChanged" and m.body[0] == names.BUS_NAME
                        and m.body[2] != "")


def creates(sim: Simulation) -> list[tuple[str, str]]:
    return [(w[1], w[2]) for w in sim.write_log() if w[0].endswith("/create")]


def owned(sim: Simulation) -> dict[str, str]:
    return json.loads((sim.state_dir / "created.json").read_text())["created"]


@pytest.mark.parametrize("phase", ["before", "after"])
def test_killed_around_the_create_write(sim: Simulation, phase: str) -> None:
    sim.sim_call("KillOnWrite", "ss", ["/create", phase])
    with pytest.raises(CallError):  # gvtd died while answering
        sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U)
    restarted(sim)
    v = sim.client.vgpus()["win10"]
    assert (v["State"], v["Managed"]) == ("active", True)
    mdevs = [p.name for p in (sim.root / "sys/bus/mdev/devices").iterdir()]
    assert mdevs == [U]  # exactly one, none leaked
    ok = [c for c in creates(sim) if c[1] == "ok"]
    assert ok == [(U, "ok")]  # created once: adopted after the restart, not created again
    assert owned(sim) == {U: "win10"}  # recorded before the write, so it is gvtd's own
    assert (sim.config_dir / "vgpus.d" / "win10.toml").read_text().count(U) == 1


@pytest.mark.parametrize("phase", ["before", "after"])
def test_killed_in_a_batch_of_creates(sim: Simulation, phase: str) -> None:
    """A reload that creates three vGPUs records all three in one write before the first
    create; killed at that create, the restart leaks none and creates none twice. The GPU
    has room for two: the third's record is dropped again, since it was never made."""
    uuids = [f"fff6f017-3417-4ad3-b05e-17ae3e1a46{i:02}" for i in range(3)]
    (sim.config_dir / "vgpus.d").mkdir(exist_ok=True)
    for i, u in enumerate(uuids):
        (sim.config_dir / "vgpus.d" / f"vm{i}.toml").write_text(
            f'uuid = "{u}"\ntype = "i915-GVTg_V5_8"\n')
    sim.sim_call("KillOnWrite", "ss", ["/create", phase])
    with pytest.raises(CallError):
        sim.client.call("Reload")
    restarted(sim)
    v = sim.client.vgpus()
    assert [v[n]["State"] for n in ("vm0", "vm1", "vm2")] == ["active", "active", "failed"]
    assert "No room" in v["vm2"]["LastError"]
    made = uuids[:2]
    assert sorted(p.name for p in (sim.root / "sys/bus/mdev/devices").iterdir()) == made
    assert sorted(c for c in creates(sim) if c[1] == "ok") == [(u, "ok") for u in made]
    assert owned(sim) == {made[0]: "vm0", made[1]: "vm1"}


@pytest.mark.parametrize("phase, state", [("before", "active"), ("after", "inactive")])
def test_killed_around_the_remove_write(sim: Simulation, phase: str, state: str) -> None:
    sim.client.define(name="m", type="i915-GVTg_V5_4", uuid=U, start="manual")
    sim.client.call("CreateVGPU", "s", ["m"])
    sim.sim_call("KillOnWrite", "ss", ["/remove", phase])
    with pytest.raises(CallError):
        sim.client.call("RemoveVGPU", "s", ["m"])
    restarted(sim)
    assert sim.client.vgpus()["m"]["State"] == state
    assert len(list((sim.root / "sys/bus/mdev/devices").iterdir())) == (state == "active")
    assert U in owned(sim)
    assert [c for c in creates(sim) if c[1] == "ok"] == [(U, "ok")]


def test_kill_on_write_checks_its_arguments(sim: Simulation) -> None:
    with pytest.raises(CallError):
        sim.sim_call("KillOnWrite", "ss", ["/create", "during"])


def test_a_vgpu_that_keeps_vanishing_is_not_recreated_forever(sim: Simulation) -> None:
    """Created, then removed at once by the 'driver', again and again: gvtd restores it a
    bounded number of times, then stops and says why."""
    sim.sim_call("VanishAfterCreate", "su", ["i915-GVTg_V5_4", 100])
    path = sim.client.define(name="win10", type="i915-GVTg_V5_4", uuid=U)
    sim.client.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == path
                        and "vanished" not in str(m.body) and
                        "LastError" in m.body[1] and "stopped recreating" in m.body[1]["LastError"].value)
    v = sim.client.vgpus()["win10"]
    assert v["State"] == "failed" and "kernel log" in v["LastError"]
    made = [c for c in creates(sim) if c == (U, "ok")]
    assert len(made) == 4  # the create, then 3 restores: bounded, no storm
    # an explicit create tries again
    sim.sim_call("VanishAfterCreate", "su", ["i915-GVTg_V5_4", 0])
    sim.client.call("CreateVGPU", "s", ["win10"])
    assert sim.client.vgpus()["win10"]["State"] == "active"


def test_full_or_read_only_configuration(dbus, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The disk filling up or turning read-only: a named error, the old files intact, no
    temporary file left, and gvtd keeps running."""
    import os
    import subprocess

    from harness import tree_snapshot

    etc = tmp_path / "etc"
    etc.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "gvtd-test", str(etc)], check=True)
    sim = None
    try:
        sim = Simulation(dbus, config_dir=etc)
        sim.client.define(name="a", type="i915-GVTg_V5_8", uuid=U)
        sim.client.define(name="m", type="i915-GVTg_V5_8", start="manual")
        before = tree_snapshot(etc)
        fd = os.open(etc / "filler", os.O_WRONLY | os.O_CREAT)  # fill the file system
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        before["filler"] = (etc / "filler").read_bytes()
        with pytest.raises(CallError) as e:
            sim.client.define(name="b", type="i915-GVTg_V5_8")
        assert e.value.name == names.ERROR_PREFIX + "Failed"
        assert "No space left on device" in e.value.text and "Nothing was changed" in e.value.text
        assert tree_snapshot(etc) == before  # a.toml intact, no temporary file
        with pytest.raises(CallError) as e:  # no room to record it as gvtd's: not created
            sim.client.call("CreateVGPU", "s", ["m"])
        assert "it was not created" in e.value.text
        assert len(creates(sim)) == 1 and sim.client.vgpus()["m"]["State"] == "failed"
        (etc / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(etc)], check=True)
        with pytest.raises(CallError) as e:
            sim.client.define(name="c", type="i915-GVTg_V5_8")
        assert "Read-only file system" in e.value.text
        assert sim.client.vgpus()["a"]["State"] == "active"  # still running, still right
    finally:
        if sim is not None:
            sim.stop()
        subprocess.run(["umount", "-l", str(etc)], check=False)


# A Define writes two files: the definition as a new file (config.create_new: linked to its
# name, never over another), then the ownership record as it creates the vGPU (atomic_write:
# renamed over the old one). Each syscall of those writes, in order, with what has happened
# when gvtd is killed on entering it.
DEFINE_STEPS = {
    "definition temp created, empty": ("write", 1, "vgpus.d/.win10.toml."),
    "definition temp written, not synced": ("fsync", 1, "vgpus.d/.win10.toml."),
    "definition temp synced, not linked": ("link", 1, "vgpus.d/.win10.toml."),
    "definition linked, temp not removed": ("unlink", 1, "vgpus.d/.win10.toml."),
    "definition linked, directory not synced": ("fsync", 2, "vgpus.d>"),
    "ownership temp created, empty": ("write", 2, "state/.created.json."),
    "ownership temp synced, not renamed": ("rename", 1, "state/.created.json."),
    "ownership renamed, directory not synced": ("fsync", 4, "state>"),
}


class Strace:
    """SIGKILL gvtd on entering its nth call of one syscall (strace's fault injection, in
    the kernel's ptrace stop: the syscall never runs), logging the file it was about.

    Every thread is traced (-f): gvtd makes its durable writes in its one disk thread, off
    the loop. strace counts calls per thread, and that thread makes the writes of a Define
    in the order DEFINE_STEPS lists, so the nth call is the same step as on the loop."""

    def __init__(self, pid: int, syscall: str, nth: int, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            ["strace", "-f", "-p", str(pid), "-y", "-o", str(log),
             "-e", "trace=write,fchmod,fsync,rename,link,unlink",
             "-e", f"inject={syscall}:signal=KILL:when={nth}"],
            stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "strace: Process N attached": tracing from now
        assert "attached" in line, line

    def killed_in(self) -> str:
        """The traced line gvtd died in."""
        assert self.proc.wait(30) == 0
        # with -f each line starts with its thread's id, and every thread ends killed
        lines = [line.split(None, 1)[1] for line in self.log.read_text().splitlines()]
        assert lines[-1] == "+++ killed by SIGKILL +++", lines[-3:]
        return [line for line in lines if not line.startswith(("+++", "<...", "---"))][-1]


@pytest.mark.parametrize("step", list(DEFINE_STEPS))
def test_killed_at_each_step_of_a_define(dbus, tmp_path: Path, step: str) -> None:  # type: ignore[no-untyped-def]
    """After the restart the definition is absent or whole, never partial; no temporary
    file is left behind; the ownership record reads; exactly one mdev, created once."""
    syscall, nth, path = DEFINE_STEPS[step]
    etc = tmp_path / "etc"
    sim = Simulation(dbus, config_dir=etc, extra=["--log-level", "error"])  # no log writes
    try:
        sim.client.define(name="old", type="i915-GVTg_V5_8", uuid=U2)  # ownership: old one
        pid = sim.sim_props()["DaemonPid"]
        strace = Strace(pid, syscall, nth, tmp_path / "strace.log")
        with pytest.raises(CallError):  # gvtd died while answering
            sim.client.define(name="win10", type="i915-GVTg_V5_8", uuid=U)
        died = strace.killed_in()
        assert died.startswith(f"{syscall}(") and path in died, died
        restarted(sim)
        temporaries = [p.name for d in (etc / "vgpus.d", etc / "state") for p in d.iterdir()
                       if p.name.startswith(".")]
        assert temporaries == []
        written = sorted(p.name for p in (etc / "vgpus.d").iterdir())
        vgpus = sim.client.vgpus()
        if written == ["old.toml"]:  # the old state: the Define never happened
            assert set(vgpus) == {"old"} and list(owned(sim)) == [U2]
            expected = {U2}
        else:  # the new state, whole: the vGPU made (once), and gvtd's own
            assert written == ["old.toml", "win10.toml"]
            assert Definition.model_validate(
                tomllib.loads((etc / "vgpus.d/win10.toml").read_text())).uuid == U
            assert vgpus["win10"]["State"] == "active" and owned(sim) == {U2: "old", U: "win10"}
            expected = {U2, U}
        assert {p.name for p in (sim.root / "sys/bus/mdev/devices").iterdir()} == expected
        assert sorted(u for u, result in creates(sim) if result == "ok") == sorted(expected)
        assert vgpus["old"]["State"] == "active"
    finally:
        sim.stop()


PARENT = "0000:00:02.0"


def unregister_mid_create(sim: Simulation) -> None:
    """With gvtd inside its create write: the parent unregisters, then the write goes on."""
    assert sim.sim_call("WaitStalled")[0].endswith("/create")
    sim.sim_call("UnregisterParent", "s", [PARENT])
    sim.sim_call("ReleaseWrites")


def state_signal(sim: Simulation, name: str, state: str) -> Message:
    path = names.vgpu_path(sim.client.vgpus()[name]["UUID"])
    return sim.client.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == path
                               and plain(m.body[1]).get("State") == state)


def test_parent_unregisters_in_the_middle_of_a_reconciliation(sim: Simulation) -> None:
    """The Define's pass is inside the create when kvmgt unloads: the definition stays,
    the vGPU waits as parent-missing with a LastError that says so, and it is created
    once, not twice, when the parent registers again."""
    sim.sim_call("StallWrites", "s", ["/create"])
    reply = sim.client.send_call("Define", "a{sv}", [{"name": Variant("s", "a"), "uuid": Variant("s", U),
                                           "type": Variant("s", "i915-GVTg_V5_8")}])
    unregister_mid_create(sim)
    assert reply().message_type is MessageType.METHOD_RETURN  # defined; created later
    v = sim.client.vgpus()["a"]
    assert v["State"] == "parent-missing" and "registers" in v["LastError"]
    assert creates(sim) == [(U, "ENODEV")] and U not in owned(sim)
    sim.sim_call("RegisterParent", "s", [PARENT])
    state_signal(sim, "a", "active")
    assert creates(sim) == [(U, "ENODEV"), (U, "ok")]
    assert sim.client.vgpus()["a"]["LastError"] == "" and owned(sim) == {U: "a"}


def test_parent_unregisters_in_the_middle_of_a_start_domain(sim: Simulation) -> None:
    """StartDomain is creating the domain's vGPU when kvmgt unloads: ParentMissing with a
    sentence, the domain not started, nothing recorded as gvtd's; after the parent is back
    the next StartDomain creates it once and starts the domain."""
    if not sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["LibvirtConnected"]:
        sim.client.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == names.ROOT_PATH
                            and plain(m.body[1]).get("LibvirtConnected") is True)
    sim.client.define(name="win10", type="i915-GVTg_V5_8", uuid=U, start="on-demand",
                      domain="win10")
    sim.sim_call("StallWrites", "s", ["/create"])
    reply = sim.client.send_call("StartDomain", "sa{sv}", ["win10", {}])
    unregister_mid_create(sim)
    r = reply()
    assert r.error_name == names.ERROR_PREFIX + "ParentMissing", r.body
    assert "kvmgt" in r.body[0] or "register" in r.body[0], r.body
    domain = names.domain_path("win10")
    assert sim.client.props(domain, names.DOMAIN_IFACE)["State"] == "shut-off"
    assert sim.client.vgpus()["win10"]["State"] == "parent-missing"
    assert U not in owned(sim) and creates(sim) == [(U, "ENODEV")]
    sim.sim_call("RegisterParent", "s", [PARENT])
    sim.client.wait_for(lambda m: m.member == "PropertiesChanged"
                        and plain(m.body[1]).get("Registered") is True)
    sim.client.call("StartDomain", "sa{sv}", ["win10", {}])
    assert sim.client.props(domain, names.DOMAIN_IFACE)["State"] == "running"
    assert creates(sim) == [(U, "ENODEV"), (U, "ok")]


STALLED = 3.0  # seconds the emulated kernel holds gvtd's call: three times WatchdogSec


@pytest.mark.parametrize("stall, suffix", [("StallWrites", "/create"),
                                           ("StallReads", "/available_instances")])
def test_a_stalled_sysfs_call_during_start_domain_stalls_nothing_else(
        dbus, stall: str, suffix: str) -> None:  # type: ignore[no-untyped-def]
    """A StartDomain held inside its create write (a stuck driver) or inside the full
    re-read of sysfs before it: gvtd keeps answering Ping and GetManagedObjects and pinging
    the watchdog; once the kernel goes on, the vGPU is created once and the domain starts."""
    sim = Simulation(dbus, env=WATCHDOG)
    try:
        if not sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["LibvirtConnected"]:
            sim.client.wait_for(lambda m: m.member == "PropertiesChanged"
                                and m.path == names.ROOT_PATH
                                and plain(m.body[1]).get("LibvirtConnected") is True)
        sim.client.define(name="win10", type="i915-GVTg_V5_8", uuid=U, start="on-demand",
                          domain="win10")
        sim.sim_call(stall, "s", [suffix])
        reply = sim.client.send_call("StartDomain", "sa{sv}", ["win10", {}])
        try:
            assert sim.sim_call("WaitStalled")[0].endswith(suffix)
            assert keeps_answering(sim, STALLED) >= STALLED / WATCHDOG_SEC
        finally:
            sim.sim_call("ReleaseWrites")
        r = reply()
        assert r.message_type is MessageType.METHOD_RETURN, r.body
        domain = names.domain_path("win10")
        assert sim.client.props(domain, names.DOMAIN_IFACE)["State"] == "running"
        assert [c for c in creates(sim) if c[1] == "ok"] == [(U, "ok")]
    finally:
        sim.stop()


def sysfs_problems(sim: Simulation) -> list[list[str]]:
    problems = sim.client.props(names.ROOT_PATH, names.MANAGER_IFACE)["Problems"]
    return [p for p in problems if p[0].startswith("sysfs:")]


@pytest.mark.parametrize("error, text", [("EACCES", "Permission denied"),
                                         ("EIO", "Input/output error")])
def test_an_unreadable_sysfs_file_is_reported_not_taken_for_absence(
        sim: Simulation, error: str, text: str) -> None:
    """An mdev's `mdev_type` link that cannot be read (not: is not there) during a full
    re-read: the vGPU stays active and is not created again, and Problems names the file
    and the errno until it reads again."""
    sim.client.define(name="a", type="i915-GVTg_V5_8", uuid=U)
    assert sim.client.vgpus()["a"]["State"] == "active"
    sim.sim_call("FailReads", "ss", [f"/{U}/mdev_type", error])
    try:
        sim.client.call("Reload")  # re-reads everything
        (problem,) = sysfs_problems(sim)
        assert problem[0].endswith(f"/{U}/mdev_type") and problem[1] == "error", problem
        assert f"{text} ({error})" in problem[2] and "permissions" in problem[3], problem
        v = sim.client.vgpus()["a"]
        assert (v["State"], v["LastError"]) == ("active", "")
    finally:
        sim.sim_call("ReleaseWrites")
    assert creates(sim) == [(U, "ok")]  # not taken for gone: never created again
    sim.client.call("Reload")
    assert sysfs_problems(sim) == []


def test_fail_reads_checks_its_arguments(sim: Simulation) -> None:
    with pytest.raises(CallError):
        sim.sim_call("FailReads", "ss", ["/mdev_type", "ENOTANERRNO"])


def test_a_stalled_read_of_one_parent_during_create_vgpu_stalls_nothing_else(dbus) -> None:  # type: ignore[no-untyped-def]
    """CreateVGPU re-reads only its parent before the write (no full re-read): held inside
    that read, gvtd keeps answering and pinging the watchdog, then creates the vGPU."""
    sim = Simulation(dbus, env=WATCHDOG)
    try:
        sim.client.define(name="m", type="i915-GVTg_V5_8", uuid=U, start="manual")
        sim.sim_call("StallReads", "s", ["/available_instances"])
        reply = sim.client.send_call("CreateVGPU", "s", ["m"])
        try:
            assert sim.sim_call("WaitStalled")[0].endswith("/available_instances")
            assert keeps_answering(sim, STALLED) >= STALLED / WATCHDOG_SEC
        finally:
            sim.sim_call("ReleaseWrites")
        r = reply()
        assert r.message_type is MessageType.METHOD_RETURN, r.body
        assert sim.client.vgpus()["m"]["State"] == "active"
        assert creates(sim) == [(U, "ok")]
    finally:
        sim.stop()


@contextmanager
def sysfs_on_loop(sim: Simulation, tmp_path: Path) -> Iterator[list[str]]:
    """The emulated sysfs's files that the daemon's loop thread touched while the block
    ran (the list is filled when it ends): strace follows that thread alone (no -f), while
    the worker threads may read and write what they like."""
    pid = sim.sim_props()["DaemonPid"]
    log = tmp_path / "loop.strace"
    strace = subprocess.Popen(["strace", "-p", str(pid), "-o", str(log), "-e", "trace=%file"],
                              stderr=subprocess.PIPE, text=True)
    on_loop: list[str] = []
    try:
        assert strace.stderr is not None
        line = strace.stderr.readline()  # "strace: Process N attached": tracing from now
        assert "attached" in line, line
        yield on_loop
    finally:
        strace.terminate()
        strace.wait()
    on_loop += [line for line in log.read_text().splitlines() if f"{sim.root}/sys/" in line]


def test_reads_after_a_failed_create_stay_off_the_loop(sim: Simulation, tmp_path: Path) -> None:
    """A create refused for want of room (the sentence re-reads the parent for what still
    fits) and one whose write fails (gvtd then asks whether the mdev exists): neither read
    runs on the loop. strace follows the loop's thread alone (no -f) and sees none of the
    emulated sysfs's files, while the worker threads read them."""
    sim.client.define(name="small", type="i915-GVTg_V5_8")  # room left for one _8, no _4
    sim.client.define(name="more", type="i915-GVTg_V5_4", start="manual")
    sim.client.define(name="m", type="i915-GVTg_V5_8", uuid=U, start="manual")
    with sysfs_on_loop(sim, tmp_path) as on_loop:
        with pytest.raises(CallError) as e:
            sim.client.call("CreateVGPU", "s", ["more"])
        assert e.value.name == names.ERROR_PREFIX + "NoCapacity" and "DVMT" in e.value.text
        sim.sim_call("FailWrites", "ss", ["/create", "EIO"])
        try:
            with pytest.raises(CallError) as e:
                sim.client.call("CreateVGPU", "s", ["m"])
        finally:
            sim.sim_call("ReleaseWrites")
        assert e.value.name == names.ERROR_PREFIX + "Failed", e.value
    assert on_loop == []
    assert "m" not in owned(sim).values()  # the mdev was not made: not gvtd's

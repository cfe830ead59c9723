"""Hostile input to every method of the running daemon, from root and from a user.

gvtd runs as root on a system-type bus that enforces the shipped policy, with
python-dbusmock's polkitd answering (tests/security/sysbus.py). hypothesis generates waves
of 100 calls (path traversal, very long strings, control characters, unicode, empty values,
unknown keys and wrong variant types in a{sv}, wrong signatures) to every Manager method,
the libvirt hook's PrepareDomain and ReleaseDomain included; each call goes either from a
root connection or from one whose uid is nobody's, and each wave sets what polkit grants
(nothing, the domain action, or everything), so that the user's calls are refused at the
gate or get as deep as root's. At least 10,000 calls per run. After each wave: gvtd still
runs, every error is a named gvtd error, a standard D-Bus error about the call's form, or
(for the user only) AccessDenied, and the emulated kernel saw no write outside the create
file of a type its parent lists, an mdev's remove file, or an mdev's own attribute.

The user's connection is made with the test's effective uid set to nobody's for the
connect() (the bus reads the peer's credentials then, as SO_PEERCRED) and authenticates as
that uid; the bus and gvtd then see a caller whose uid is not root.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from gvtd import names
from gvtd.config import ATTR_NAME_RE, NAME_RE, UUID_RE
from harness import Simulation, connect_as
from sysbus import NOBODY, PolkitMock, manager_methods, policed

WAVE = 100
WAVES = 100
PARENT = "0000:00:02.0"
GVTD_ERRORS = {names.ERROR_PREFIX + n for n in (
    "InvalidArgument", "NotFound", "NoCapacity", "ParentMissing", "Busy",
    "LibvirtUnavailable", "Failed")}
# What the bus or dbus-fast answer for a call of the wrong form, before any gvtd code runs.
FORM_ERRORS = {f"org.freedesktop.DBus.Error.{n}" for n in (
    "UnknownMethod", "UnknownObject", "UnknownInterface", "UnknownProperty", "InvalidArgs",
    "InvalidSignature", "PropertyReadOnly")}
# ... and for a caller who is not root: polkit's refusal (gvtd's gate), or the bus policy's.
USER_ERRORS = {names.ACCESS_DENIED}
# What polkit grants the user, drawn per wave.
GRANTS = [[], [names.ACTION_DOMAIN], [names.ACTION_MANAGE, names.ACTION_VGPU, names.ACTION_DOMAIN]]

# Strings: valid names that reach deep into gvtd, and everything a hostile caller tries.
HOSTILE = ["", ".", "..", "../../../etc/passwd", "/etc/gvtd/gvtd.toml", "a/../../b", "win10/..",
           "x" * 65, "y" * 5000, "-rf", "*", "~root", "$(reboot)", "a\nb", "\t", "\x7f",
           "\x1b[31m", "é", "ｗｉｎ１０", "🎮", "\u202egpu", "WIN10", "0000:00:02.0/../..",
           "i915-GVTg_V5_4/../../remove", "FFF6F017-3417-4AD3-B05E-17AE3E1A4615"]
VALID = ["win10", "a", "b", "fuzz-1", "i915-GVTg_V5_8", "i915-GVTg_V5_4", "i915-GVTg_V5_1",
         PARENT, "auto", "manual", "on-demand", "1920x1200", "1024x768",
         "fff6f017-3417-4ad3-b05e-17ae3e1a4615"]
text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
               max_size=200)
strings = st.one_of(st.sampled_from(VALID), st.sampled_from(HOSTILE), text)

DEFINE_KEYS = ["name", "uuid", "parent", "type", "min_resolution", "start", "domain", "attrs"]
variants = st.one_of(
    strings.map(lambda s: Variant("s", s)),
    st.integers(0, 2**32 - 1).map(lambda i: Variant("u", i)),
    st.integers(-2**31, 2**31 - 1).map(lambda i: Variant("i", i)),
    st.booleans().map(lambda b: Variant("b", b)),
    st.lists(strings, max_size=4).map(lambda v: Variant("as", v)),
    st.lists(st.tuples(strings, strings).map(list), max_size=4).map(lambda v: Variant("a(ss)", v)),
    st.binary(max_size=64).map(lambda b: Variant("ay", b)),
    strings.map(lambda s: Variant("v", Variant("s", s))),
    st.floats(allow_nan=True).map(lambda d: Variant("d", d)),
)
options = st.dictionaries(st.one_of(st.sampled_from(DEFINE_KEYS), strings), variants, max_size=6)
# Define with mostly well-typed fields, so that calls get past the type check.
define_options = st.one_of(options, st.fixed_dictionaries(
    {"name": strings.map(lambda s: Variant("s", s))},
    optional={k: (strings.map(lambda s: Variant("s", s)) if k != "attrs" else
                  st.lists(st.tuples(strings, strings).map(list), max_size=3)
                  .map(lambda v: Variant("a(ss)", v))) for k in DEFINE_KEYS[1:]}))
# ... and definitions that are valid but for at most one hostile field, so that vGPUs do get
# created, their attributes written and their files saved.
near_valid_define = st.tuples(
    st.fixed_dictionaries({
        "name": st.sampled_from(["a", "b", "fuzz-1", "win10"]).map(lambda s: Variant("s", s)),
        "type": st.sampled_from(["i915-GVTg_V5_8", "i915-GVTg_V5_4"]).map(lambda s: Variant("s", s)),
        "start": st.sampled_from(["auto", "manual", "on-demand"]).map(lambda s: Variant("s", s)),
    }, optional={"attrs": st.lists(st.tuples(st.sampled_from(["remove", "../remove", "uevent",
                                                              "mdev_type", "x"]) | strings,
                                             strings).map(list), max_size=3)
                 .map(lambda v: Variant("a(ss)", v))}),
    st.sampled_from(DEFINE_KEYS) | strings, st.one_of(st.none(), variants),
).map(lambda a: {**a[0], **({a[1]: a[2]} if a[2] is not None else {})})
stop_options = st.dictionaries(st.sampled_from(["force", "timeout"]) | strings, variants,
                               max_size=3)
# The hook's options: the domain XML's mdev UUIDs, valid or not, or anything else.
uuid_strings = st.one_of(st.uuids().map(str), st.sampled_from(VALID + HOSTILE), strings)
hook_options = st.one_of(options, st.fixed_dictionaries(
    {"uuids": st.lists(uuid_strings, max_size=4).map(lambda v: Variant("as", v)) | variants},
    optional={"x": variants}))


# Every Manager method; test_fuzz_every_method checks that gvtd exports no other.
FUZZED = ["Define", "Undefine", "CreateVGPU", "RemoveVGPU", "StartDomain", "StopDomain",
          "PrepareDomain", "ReleaseDomain", "AttachVGPU", "DetachVGPU", "TuneDomain", "Reload",
          "Diagnose", "NewDomain"]


def call(member: str, signature: str, *body: Any, iface: str = names.MANAGER_IFACE,
         path: str = names.ROOT_PATH) -> dict[str, Any]:
    return {"member": member, "signature": signature, "body": list(body), "iface": iface,
            "path": path}


object_paths = st.one_of(
    st.sampled_from([names.ROOT_PATH, names.parent_path(PARENT), names.VGPU_PREFIX + "/x",
                     names.domain_path("win10"), "/", "/io/github/gvtd1/x/y"]),
    strings.map(lambda s: names.ROOT_PATH + "/" + names.escape_path_element(s)))
wrong_bodies = st.sampled_from([("", []), ("u", [7]), ("ss", ["a", "b"]), ("as", [["x"]]),
                                ("a{sv}", [{}]), ("s", ["win10"]), ("sa{sv}", ["x", {}])])
calls = st.one_of(
    define_options.map(lambda o: call("Define", "a{sv}", o)),
    near_valid_define.map(lambda o: call("Define", "a{sv}", o)),
    strings.map(lambda s: call("Undefine", "s", s)),
    strings.map(lambda s: call("CreateVGPU", "s", s)),
    strings.map(lambda s: call("RemoveVGPU", "s", s)),
    st.tuples(strings, options).map(lambda a: call("StartDomain", "sa{sv}", *a)),
    st.tuples(strings, stop_options).map(lambda a: call("StopDomain", "sa{sv}", *a)),
    st.tuples(strings, strings, options).map(lambda a: call("AttachVGPU", "ssa{sv}", *a)),
    st.tuples(strings, strings).map(lambda a: call("DetachVGPU", "ss", *a)),
    st.tuples(strings, options).map(lambda a: call("TuneDomain", "sa{sv}", *a)),
    # descriptor indices with no descriptors carried: gvtd must never take them for its own
    st.tuples(strings, st.integers(0, 64), st.integers(0, 64), options)
    .map(lambda a: call("NewDomain", "shha{sv}", *a)),
    st.tuples(strings, hook_options).map(lambda a: call("PrepareDomain", "sa{sv}", *a)),
    st.tuples(strings, hook_options).map(lambda a: call("ReleaseDomain", "sa{sv}", *a)),
    st.tuples(st.sampled_from([names.MANAGER_IFACE, names.PARENT_IFACE, names.VGPU_IFACE,
                               names.DOMAIN_IFACE]) | strings.filter(bool), strings,
              object_paths)
    .filter(lambda a: re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+", a[0])
            is not None)
    .map(lambda a: call("Get", "ss", a[0], a[1], iface=names.PROPERTIES_IFACE, path=a[2])),
    object_paths.map(lambda p: call("GetManagedObjects", "", iface=names.OBJECT_MANAGER_IFACE,
                                    path=p)),
    st.tuples(st.sampled_from(FUZZED), wrong_bodies)
    .map(lambda a: call(a[0], a[1][0], *a[1][1])),
)
# Reload and Diagnose re-read the whole host: rarer, so that a run stays within a minute.
# Each call with its caller: True for the user (nobody), False for root.
waves = st.tuples(
    st.lists(st.tuples(st.one_of(calls, calls, calls, calls, calls, calls, calls, calls, calls,
                                 st.sampled_from([call("Reload", ""), call("Diagnose", "")])),
                       st.booleans()),
             min_size=WAVE, max_size=WAVE),
    st.sampled_from(GRANTS))


def allowed_write(path: str, data: str, types: set[str]) -> bool:
    """A create of a listed type with a UUID, an mdev's remove, or an mdev's own attribute."""
    m = re.fullmatch(r"/sys/devices/.*/mdev_supported_types/([^/]+)/create", path)
    if m:
        return m.group(1) in types and UUID_RE.fullmatch(data) is not None
    m = re.fullmatch(r"/sys/devices/.*/([0-9a-f-]{36})/([^/]+)", path)
    if m and UUID_RE.fullmatch(m.group(1)):
        return (m.group(2) == "remove" and data == "1") or (
            m.group(2) != "remove" and ATTR_NAME_RE.fullmatch(m.group(2)) is not None)
    return False


def file_names(path: Path) -> set[str]:
    return {str((Path(d) / f).relative_to(path)) for d, _, fs in os.walk(path) for f in fs}


# A wave that surely writes (root defines an auto vGPU, which gvtd creates at once), so
# that the check of the kernel's writes always has writes to check.
EXPLICIT_WAVE = ([(call("Define", "a{sv}", {"name": Variant("s", "fuzz-sure"),
                                            "type": Variant("s", "i915-GVTg_V5_8"),
                                            "start": Variant("s", "auto")}), False)]
                 + [(call("Diagnose", ""), True)] * (WAVE - 1), [])


@pytest.fixture
def world() -> Iterator[tuple[Simulation, PolkitMock]]:
    """gvtd --simulate as root on a system-type bus with the shipped policy, and polkit,
    which the fuzz sets wave by wave."""
    with policed() as (_, sim, polkit):
        yield sim, polkit


@pytest.mark.timeout(300)  # about 40 s alone; the machine is shared
def test_fuzz_every_method(world: tuple[Simulation, PolkitMock]) -> None:
    sim, polkit = world
    assert set(manager_methods(sim.client)) == set(FUZZED), "fuzz every Manager method"
    types = {t[0] for t in sim.client.props(names.parent_path(PARENT), names.PARENT_IFACE)["Types"]}
    pid = sim.sim_props()["DaemonPid"]
    workdir = sim.config_dir.parent  # etc/, state/, run/ and the simulation's own files
    files_before = file_names(workdir)
    loop = asyncio.new_event_loop()
    root = loop.run_until_complete(connect_as(sim.bus.address, 0))
    user = loop.run_until_complete(connect_as(sim.bus.address, NOBODY))
    uid_of = {bus: loop.run_until_complete(bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="GetConnectionUnixUser", signature="s",
        body=[bus.unique_name]))).body[0] for bus in (root, user)}
    assert uid_of == {root: 0, user: NOBODY}
    stats = {"calls": 0, "user_calls": 0, "errors": 0, "denied": 0, "waves": 0}
    started = time.monotonic()

    async def send(wave: list[tuple[dict[str, Any], bool]]) -> list[Message | None]:
        return await asyncio.gather(*((user if as_user else root).call(Message(
            destination=names.BUS_NAME, path=c["path"], interface=c["iface"],
            member=c["member"], signature=c["signature"], body=c["body"]))
            for c, as_user in wave))

    # No shrinking: a wave of 100 calls takes minutes to shrink, past the test's timeout,
    # and the failing call is in the assertion's message already.
    @settings(max_examples=WAVES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example])
    @given(waves)
    @example(EXPLICIT_WAVE)
    def one_wave(drawn: tuple[list[tuple[dict[str, Any], bool]], list[str]]) -> None:
        wave, grants = drawn
        polkit.allow(grants)
        replies = loop.run_until_complete(asyncio.wait_for(send(wave), 60))
        stats["calls"] += len(wave)
        stats["user_calls"] += sum(as_user for _, as_user in wave)
        stats["waves"] += 1
        for (c, as_user), reply in zip(wave, replies):
            assert reply is not None
            if reply.message_type is not MessageType.ERROR:
                continue
            stats["errors"] += 1
            text = reply.body[0] if reply.body else ""
            expected = GVTD_ERRORS | FORM_ERRORS | (USER_ERRORS if as_user else set())
            assert reply.error_name in expected, (c, as_user, grants, reply.error_name, text)
            stats["denied"] += reply.error_name == names.ACCESS_DENIED
            assert "Internal error" not in text, (c, text)
            assert isinstance(text, str) and text, (c, reply.error_name)
        for path, data, _result in sim.write_log():
            assert allowed_write(path, data, types), (path, data)

    try:
        one_wave()
    finally:
        root.disconnect()
        user.disconnect()
        loop.close()
    elapsed = time.monotonic() - started
    print(f"\nfuzz: {stats['calls']} calls in {stats['waves']} waves ({stats['user_calls']} "
          f"as uid {NOBODY}, {stats['denied']} of them AccessDenied), {stats['errors']} errors, "
          f"{elapsed:.1f} s ({stats['calls'] / elapsed:.0f} calls/s); "
          f"{len(sim.write_log())} kernel writes")
    assert sim.sim_props()["DaemonPid"] == pid, "gvtd restarted: it crashed"
    # Files appear only as definitions with valid names, or in gvtd's state directory.
    for f in file_names(workdir) - files_before:
        assert re.fullmatch(rf"{sim.config_dir.name}/vgpus\.d/{NAME_RE.pattern}\.toml", f) \
            or f.startswith(f"{sim.state_dir.relative_to(workdir)}/"), f
    assert sim.client.call("Ping", iface="org.freedesktop.DBus.Peer") == []
    assert stats["calls"] >= 10_000
    assert stats["user_calls"] >= 3_000 and stats["denied"] > 0
    assert sim.write_log(), "no kernel write to check"

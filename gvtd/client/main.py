"""gvt-client: a thin command line over gvtd's D-Bus API.

Exit status: 0 success, 1 the call failed (the message says why), 2 usage error.
It imports nothing of the daemon but the shared names, so it starts fast.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from gvtd import __version__, names
from gvtd.client import newvm, sessiondisplay, sound, view, xaccess
from gvtd.client.errors import ClientError

EPILOG = """\
examples:
  gvt-client types                          what this GPU can be split into
  gvt-client define win10 --min-resolution 1920x1200 --domain win10
  gvt-client list                           defined and present vGPUs
  gvt-client --session list                 a simulated daemon (gvtd --simulate)

Every read command takes --json for scripts. Mutating commands are authorized by polkit.
"""


BUS_DRIVER = "org.freedesktop.DBus"  # the sender of the bus's own signals


def _plain(value: Any) -> Any:
    """Variants and nested containers to plain JSON-able values."""
    if isinstance(value, Variant):
        return _plain(value.value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Client:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    async def call(self, member: str, signature: str = "", body: list[Any] | None = None,
                   path: str = names.ROOT_PATH, interface: str = names.MANAGER_IFACE,
                   destination: str = names.BUS_NAME, fds: list[int] | None = None
                   ) -> list[Any]:
        # A person at a terminal may answer a polkit password prompt for changes.
        flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if sys.stdin.isatty() else 0
        reply = await self.bus.call(Message(
            destination=destination, path=path, interface=interface, member=member,
            signature=signature, body=body or [], flags=flags, unix_fds=fds or []))
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else reply.error_name
            if reply.error_name in ("org.freedesktop.DBus.Error.ServiceUnknown",
                                    "org.freedesktop.DBus.Error.NameHasNoOwner"):
                raise ClientError("gvtd is not running on this bus. Start it with "
                                  "`systemctl start gvtd` (or use --session for `gvtd --simulate`).")
            if reply.error_name == names.ACCESS_DENIED:
                raise ClientError(f"Not authorized: {text}")
            raise ClientError(str(text))
        return reply.body

    async def owner(self) -> str:
        """gvtd's unique name: the only sender whose signals a watcher believes, since any
        connection may send a signal straight to this one, past its match rules."""
        (owner,) = await self.call("GetNameOwner", "s", [names.BUS_NAME],
                                   path="/org/freedesktop/DBus", interface=BUS_DRIVER,
                                   destination=BUS_DRIVER)
        return owner

    async def objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        (objs,) = await self.call("GetManagedObjects", interface=names.OBJECT_MANAGER_IFACE)
        return {path: {iface: _plain(props) for iface, props in ifaces.items()}
                for path, ifaces in objs.items()}

    async def manager(self) -> dict[str, Any]:
        (props,) = await self.call("GetAll", "s", [names.MANAGER_IFACE],
                                   interface=names.PROPERTIES_IFACE)
        return _plain(props)


def _table(rows: list[list[str]], header: list[str]) -> str:
    if not rows:
        return ""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


def _vgpus(objs: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for props in objs.values():
        v = props.get(names.VGPU_IFACE)
        if v is not None:
            out.append({"name": v["Name"], "uuid": v["UUID"], "parent": v["Parent"],
                        "type": v["Type"], "state": v["State"], "start": v["Start"],
                        "domain": v["Domain"], "managed": v["Managed"],
                        "origin": v.get("Origin", ""), "last_error": v["LastError"],
                        "health": v.get("Health", "ok"),
                        "health_message": v.get("HealthMessage", ""),
                        "health_time": _iso(v.get("HealthTime", 0)),
                        **_unless_mdev(backend=v.get("Backend", "mdev"),
                                       address=v.get("Address", ""))})
    return sorted(out, key=lambda v: (v["name"] == "", v["name"], v["uuid"]))


def _unless_mdev(**fields: Any) -> dict[str, Any]:
    """The backend fields (docs/backends.md) that say more than "an mdev": an mdev-only
    host's output stays as it always was."""
    if fields.get("backend", fields.get("kind")) in ("mdev", None) and not any(
            v for k, v in fields.items() if k not in ("backend", "kind")):
        return {}
    return fields


def _iso(usec: int) -> str:
    """HealthTime (microseconds since 1970) as local ISO 8601; "" for none."""
    if not usec:
        return ""
    return datetime.datetime.fromtimestamp(usec / 1e6).astimezone().isoformat(timespec="seconds")


def _parents(objs: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for props in objs.values():
        p = props.get(names.PARENT_IFACE)
        if p is not None:
            types = [{"id": t[0], "name": t[1], "available": t[2], **t[3]} for t in p["Types"]]
            out.append({"address": p["Address"], "driver": p["Driver"], "model": p["Model"],
                        "platform": p["Platform"], "registered": p["Registered"],
                        "types": types,
                        **_unless_mdev(kind=p.get("Kind", "mdev"),
                                       total_vfs=p.get("TotalVFs", 0),
                                       num_vfs=p.get("NumVFs", 0))})
    return sorted(out, key=lambda p: p["address"])


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    elif text:
        print(text)


async def cmd_list(c: Client, args: argparse.Namespace) -> None:
    vgpus = _vgpus(await c.objects())
    rows = [[v["name"] or "-", v["uuid"], v["type"] or "-", v["parent"], v["state"], v["start"],
             v["domain"] or "-", v["origin"] or "-", v["health"]] for v in vgpus]
    header = ["NAME", "UUID", "TYPE", "PARENT", "STATE", "START", "DOMAIN", "ORIGIN", "HEALTH"]
    if any("backend" in v for v in vgpus):  # not only mdevs: say which is which, and where
        header += ["BACKEND", "ADDRESS"]
        for row, v in zip(rows, vgpus):
            row += [v.get("backend", "mdev"), v.get("address") or "-"]
    text = _table(rows, header) \
        or "No vGPUs defined. Define one with `gvt-client define NAME --type TYPE`."
    errors = [f"{v['name'] or v['uuid']}: {v['last_error']}" for v in vgpus if v["last_error"]]
    errors += [f"{v['name'] or v['uuid']}: {v['health']} since {v['health_time']}: "
               f"{v['health_message']}" for v in vgpus if v["health"] != "ok"]
    _emit(args, vgpus, "\n".join([text, *errors]))


async def cmd_types(c: Client, args: argparse.Namespace) -> None:
    parents = _parents(await c.objects())
    rows = []
    for p in parents:
        # smallest share of the GPU first, as `define --min-resolution` chooses
        for t in sorted(p["types"], key=lambda t: (t.get("low_gm_mb", 0), t["id"])):
            aperture = f"{t['low_gm_mb']}/{t['high_gm_mb']} MB" if "low_gm_mb" in t else "-"
            rows.append([p["address"], t["id"], t.get("resolution", "-"), aperture,
                         str(t.get("fence", "-")), str(t.get("weight", "-")), str(t["available"])])
    text = _table(rows, ["PARENT", "TYPE", "RESOLUTION", "APERTURE LOW/HIGH", "FENCE",
                         "WEIGHT", "AVAILABLE"]) or (
        "No mdev types: no parent is registered. For GVT-g, check i915.enable_gvt=1 and that "
        "kvmgt is loaded.")
    _emit(args, [{"parent": p["address"], **t} for p in parents for t in p["types"]], text)


async def cmd_parents(c: Client, args: argparse.Namespace) -> None:
    parents = _parents(await c.objects())
    rows = [[p["address"], p["driver"] or "-", p["model"] or "-", p["platform"] or "-",
             "yes" if p["registered"] else "no", str(len(p["types"]))] for p in parents]
    header = ["PARENT", "DRIVER", "MODEL", "PLATFORM", "REGISTERED", "TYPES"]
    if any("kind" in p for p in parents):  # an SR-IOV parent: its kind and VF counts
        header += ["KIND", "VFS"]
        for row, p in zip(rows, parents):
            row += [p.get("kind", "mdev"),
                    f"{p['num_vfs']}/{p['total_vfs']}" if "kind" in p else "-"]
    text = _table(rows, header) \
        or "No mdev parents found."
    _emit(args, parents, text)


async def cmd_status(c: Client, args: argparse.Namespace) -> None:
    m = await c.manager()
    objects = await c.objects()
    vgpus = _vgpus(objects)
    names_by_path = {names.vgpu_path(v["uuid"]): v["name"] or v["uuid"] for v in vgpus}
    domains = sorted(({"name": d["Name"], "state": d["State"],
                       "vgpus": [names_by_path.get(p, p) for p in d["VGPUs"]]}
                      for ifaces in objects.values()
                      if (d := ifaces.get(names.DOMAIN_IFACE)) is not None),
                     key=lambda d: d["name"])
    problems = [{"id": p[0], "severity": p[1], "message": p[2], "fix": p[3]}
                for p in m["Problems"]]
    active = sum(v["state"] == "active" for v in vgpus)
    libvirt = "libvirt connected" if m.get("LibvirtConnected") else "libvirt NOT connected"
    lines = [f"gvtd {m['Version']}: {m['State']}, {active} of {len(vgpus)} vGPUs active, "
             f"{libvirt}"]
    for v in vgpus:
        lines.append(f"  vGPU {v['name'] or v['uuid']}: {v['state']}"
                     + (f" ({v['backend']} at {v['address']})" if v.get("address") else "")
                     + (f" ({v['last_error']})" if v["last_error"] else "")
                     + (f", {v['health']} since {v['health_time']}: {v['health_message']}"
                        if v["health"] != "ok" else ""))
    for d in domains:
        lines.append(f"  domain {d['name']}: {d['state']} (uses {', '.join(d['vgpus'])})")
    for p in problems:
        lines.append(f"{p['severity']}: {p['message']}\n  fix: {p['fix']}")
    _emit(args, {"version": m["Version"], "state": m["State"],
                 "libvirt_connected": m.get("LibvirtConnected", False), "vgpus": vgpus,
                 "domains": domains, "problems": problems}, "\n".join(lines))


async def cmd_define(c: Client, args: argparse.Namespace) -> None:
    opts: dict[str, Variant] = {"name": Variant("s", args.name)}
    for key in ("type", "min_resolution", "parent", "uuid", "start", "domain"):
        value = getattr(args, key)
        if value is not None:
            opts[key] = Variant("s", value)
    if args.attr:
        opts["attrs"] = Variant("a(ss)", [list(a) for a in args.attr])
    (path,) = await c.call("Define", "a{sv}", [opts])
    print(f"Defined {args.name} ({path})")


async def cmd_simple(c: Client, args: argparse.Namespace) -> None:
    member, done = {"undefine": ("Undefine", "Undefined"), "create": ("CreateVGPU", "Created"),
                    "remove": ("RemoveVGPU", "Removed")}[args.command]
    await c.call(member, "s", [args.name])
    print(f"{done} {args.name}")


_MARK = {"pass": "ok  ", "warn": "WARN", "fail": "FAIL"}


async def cmd_doctor(c: Client, args: argparse.Namespace) -> None:
    """The checklist in the daemon's order; exit status 1 when any check fails."""
    (found,) = await c.call("Diagnose")
    checks = [{"id": i, "severity": sev, "message": msg, "fix": fix}
              for i, sev, msg, fix in found]
    for ch in checks:  # only this (desktop) session can see its X server's access list
        for prefix, recheck in ((names.CHECK_X_ACCESS, xaccess.recheck),
                                (names.CHECK_SOUND, sound.recheck)):
            if ch["id"].startswith(prefix):
                ch["severity"], ch["message"], ch["fix"] = await asyncio.to_thread(
                    recheck, ch["id"], ch["severity"], ch["message"], ch["fix"])
    here = sessiondisplay.check(os.environ)  # which GL display works in this session
    if here is not None:
        checks.append(dict(zip(("id", "severity", "message", "fix"), here)))
    lines = []
    for ch in checks:
        lines.append(f"[{_MARK.get(ch['severity'], ch['severity'])}] {ch['id']}: {ch['message']}")
        if ch["severity"] != "pass" and ch["fix"]:
            lines.append(f"       fix: {ch['fix']}")
    _emit(args, checks, "\n".join(lines))
    failed = sum(ch["severity"] == "fail" for ch in checks)
    if failed:
        raise ClientError(f"{failed} of {len(checks)} checks failed; fix them from the top, "
                          "since later ones often follow from earlier ones.")


async def cmd_reload(c: Client, args: argparse.Namespace) -> None:
    """Reload, then what of gvtd.toml waits for a restart (Problems says so until then)."""
    await c.call("Reload")
    print("Reloaded the configuration")
    m = await c.manager()
    for p in m["Problems"]:
        if p[0].startswith("settings:restart:"):
            print(f"Needs a restart: {p[2]} {p[3]}")


async def cmd_start(c: Client, args: argparse.Namespace) -> None:
    await sound.before_start(c)
    await c.call("StartDomain", "sa{sv}", [args.domain, {}])
    print(f"{args.domain} is running")


async def cmd_attach(c: Client, args: argparse.Namespace) -> None:
    """With sound, a dry run names QEMU's user and the socket, and this session lets it in
    before anything is written. A session that cannot (no sound server here, sudo, ssh)
    leaves the sound as it was and says why."""
    options = {"dry_run": Variant("b", True), "audio": Variant("b", args.audio)}
    for key, value in (("display", args.display), ("x_display", args.x_display),
                       ("rom", args.rom)):
        if value is not None:  # what is not asked for is the daemon's default
            options[key] = Variant("s", value)
    if args.no_rom_bar:
        options["rom_bar"] = Variant("b", False)
    answer, grants = None, []
    if args.audio:
        (answer,) = await c.call("AttachVGPU", "ssa{sv}", [args.domain, args.vgpu, options])
        grants = sound.split_answer(answer)[1]
    if args.audio and not args.dry_run:
        answer = None
        try:
            for grant in grants:
                await asyncio.to_thread(sound.ensure, grant)
        except sound.SoundError as e:
            print(f"gvt-client: warning: the VM's sound is left as it was: {e}",
                  file=sys.stderr)
            del options["audio"]
            grants = []
    if answer is None:
        options["dry_run"] = Variant("b", args.dry_run)
        (answer,) = await c.call("AttachVGPU", "ssa{sv}", [args.domain, args.vgpu, options])
    lines = sound.split_answer(answer)[0].splitlines(True)
    change = "".join(x for x in lines if not x.startswith(names.PICTURE_LINE))
    picture = [x[len(names.PICTURE_LINE):].strip() for x in lines
               if x.startswith(names.PICTURE_LINE)]  # a VF: no display of its own
    heard = "".join(f"; sound through {g.socket}, which {g.user} (QEMU) may reach"
                    for g in grants)
    how = "a VF" if picture else args.display or "spice-gl"
    if args.dry_run:
        print(change or f"{args.domain} already has {args.vgpu} attached this way.", end="")
        for g in grants:
            print(f"# {g.user} (QEMU) would be let into {g.socket}")
    else:
        print(f"Attached {args.vgpu} to {args.domain} ({how}{heard})" if change else
              f"{args.domain} already has {args.vgpu} attached this way{heard}")
    for text in picture:
        print(f"Display: {text}")


def cmd_desktop_entry(args: argparse.Namespace) -> int:
    """Local files only: no call to gvtd, which runs as root and must not write them."""
    from gvtd.client import launcher

    try:
        entry = launcher.Launcher(args.domain, launcher.data_home(),
                                  "--session" if getattr(args, "bus", "") == "session" else "")
        if args.remove:
            paths = launcher.remove(entry)
            print("\n".join([f"removed {p}" for p in paths]
                            + [f"Removed the launcher of {args.domain}"]))
        else:
            paths = launcher.install(entry)
            print("\n".join([f"wrote {p}" for p in paths]
                            + [f"Installed a launcher for {args.domain}: it starts the VM "
                               "and opens its display (`gvt-client desktop-entry "
                               f"{args.domain} --remove` takes it away)"]))
    except launcher.LauncherError as e:
        raise ClientError(str(e)) from None
    return 0


async def cmd_detach(c: Client, args: argparse.Namespace) -> None:
    await c.call("DetachVGPU", "ss", [args.domain, args.vgpu])
    print(f"Detached {args.vgpu} from {args.domain}")


async def cmd_tune(c: Client, args: argparse.Namespace) -> None:
    """Only what was asked for goes to the daemon, so that it can refuse a mix that does not
    make sense (--revert with --vcpus) instead of the client dropping half of it."""
    options = {k: Variant("b", v) for k, v in (
        ("dry_run", args.dry_run), ("revert", args.revert), ("cpu", args.cpu),
        ("pinning", args.pinning), ("first_core", args.first_core), ("hyperv", args.hyperv),
        ("spice", args.spice)) if v != (k in ("cpu", "pinning", "hyperv", "spice"))}
    if args.vcpus is not None:
        options["vcpus"] = Variant("u", args.vcpus)
    (text,) = await c.call("TuneDomain", "sa{sv}", [args.domain, options])
    lines = text.splitlines(True)
    warnings = [line[2:] for line in lines if line.startswith("# warning: ")]
    change = "".join(line for line in lines if not line.startswith("# warning: "))
    if args.dry_run:
        print(change or f"{args.domain} is already tuned this way.\n", end="")
    elif args.revert:
        print(f"Reverted {args.domain} to its XML from before the last tune")
    else:
        print(f"Tuned {args.domain} (takes effect at its next start; `gvt-client tune "
              f"{args.domain} --revert` undoes it)" if change else
              f"{args.domain} is already tuned this way")
    for warning in warnings:
        print(warning, end="", file=sys.stderr)


async def cmd_stop(c: Client, args: argparse.Namespace) -> None:
    options = {"force": Variant("b", args.force), "timeout": Variant("u", args.timeout)}
    path = names.domain_path(args.domain)
    gvtd = await c.owner()

    def progress(msg: Message) -> None:  # the domain's state as libvirt reports it
        if msg.member == "PropertiesChanged" and msg.path == path and msg.sender == gvtd \
                and msg.interface == names.PROPERTIES_IFACE and msg.signature == "sa{sv}as":
            state = _plain(msg.body[1]).get("State")
            if state:
                print(f"  {args.domain}: {state}", flush=True)

    c.bus.add_message_handler(progress)
    await c.call("AddMatch", "s", [f"type='signal',sender='{names.BUS_NAME}',path='{path}',"
                                   "member='PropertiesChanged'"],
                 path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
                 destination="org.freedesktop.DBus")
    print(f"Asking {args.domain} to shut down (up to {args.timeout} s"
          + (", then forcing it off)" if args.force else ")") + "...", flush=True)
    await c.call("StopDomain", "sa{sv}", [args.domain, options])
    print(f"{args.domain} is off (gvtd removed its on-demand vGPUs, if it had any)")


async def cmd_import_mdevctl(c: Client, args: argparse.Namespace) -> None:
    """Define mdevctl's definitions in gvtd, all or none; auto ones only with --take-over."""
    from gvtd.client import mdevctl

    try:
        entries = mdevctl.read_dir(args.dir)
    except mdevctl.MdevctlError as e:
        raise ClientError(str(e)) from None
    defined = {v["uuid"]: v["name"] for v in _vgpus(await c.objects()) if v["name"]}
    taken = set(defined.values())
    plan, lines = [], []
    for e in entries:
        what = f"{e.uuid} ({e.type_id} on {e.parent}, mdevctl start {e.start})"
        if e.uuid in defined:
            lines.append(f"skipped {what}: already defined in gvtd as {defined[e.uuid]}")
        elif e.start == "auto" and not args.take_over:
            lines.append(f"skipped {what}: mdevctl creates it at boot and gvtd never starts a "
                         "UUID mdevctl auto-starts; --take-over imports it as start auto")
        else:
            name = next(n for n in (f"mdev-{e.uuid[:8]}", f"mdev-{e.uuid}") if n not in taken)
            taken.add(name)
            plan.append((name, e))
            lines.append(f"{'would import' if args.dry_run else 'imported'} {what} as {name}, "
                         f"start {e.start}")
            if e.start == "auto":
                lines.append(f"  then let gvtd alone start it: mdevctl undefine --uuid {e.uuid}")
    done: list[str] = []
    for name, e in [] if args.dry_run else plan:
        opts = {"name": Variant("s", name), "uuid": Variant("s", e.uuid),
                "parent": Variant("s", e.parent), "type": Variant("s", e.type_id),
                "start": Variant("s", e.start),
                "attrs": Variant("a(ss)", [list(a) for a in e.attrs])}
        if args.take_over:  # a running mdev becomes gvtd's, to remove as its own
            opts["take_over"] = Variant("b", True)
        try:
            await c.call("Define", "a{sv}", [opts])
        except ClientError as err:
            for n in reversed(done):
                await c.call("Undefine", "s", [n])
            raise ClientError(f"{args.dir / e.parent / e.uuid}: {err} Nothing was imported.") \
                from None
        done.append(name)
    lines.append(f"{'Dry run: would import' if args.dry_run else 'Imported'} {len(plan)} of "
                 f"{len(entries)} mdevctl definitions from {args.dir}"
                 + ("; nothing was defined." if args.dry_run else "."))
    print("\n".join(lines))


async def cmd_export(c: Client, args: argparse.Namespace) -> None:
    """gvtd's definitions in mdevctl's format: on stdout as `mdevctl list --defined
    --dumpjson` prints them, or as mdevctl's own files under --dir."""
    from gvtd.client import mdevctl

    entries, unplaced = [], []
    for ifaces in (await c.objects()).values():
        v = ifaces.get(names.VGPU_IFACE)
        if v is None or not v["Name"]:
            continue
        if v["Parent"] == "auto" or not v["Type"]:
            unplaced.append(v["Name"])
            continue
        entries.append(mdevctl.Entry(v["UUID"], v["Parent"], v["Type"],
                                     "auto" if v["Start"] == "auto" else "manual",
                                     tuple((a, b) for a, b in v.get("Attrs", []))))
    if unplaced:
        raise ClientError(f"{', '.join(sorted(unplaced))}: no registered parent or type yet "
                          "(parent auto or min_resolution), and mdevctl needs both; define "
                          "them with --parent and --type to export. Nothing was written.")
    if args.dir is None:
        print(mdevctl.dumpjson(entries))
        return
    try:
        written = mdevctl.write_dir(args.dir, entries)
    except mdevctl.MdevctlError as e:
        raise ClientError(str(e)) from None
    auto = sum(e.start == "auto" for e in entries)
    print("\n".join([f"wrote {p}" for p in written]
                    + [f"Exported {len(entries)} definitions to {args.dir} "
                       f"({len(entries) - len(written)} already there)."]
                    + ([f"note: mdevctl auto-starts the {auto} with start auto from there; "
                        "if that is /etc/mdevctl.d, hand them over with `gvt-client undefine "
                        "NAME` (doctor fails while both tools start one)."] if auto else [])))


def _describe(path: str, ifaces: dict[str, dict[str, Any]]) -> tuple[str, str, str]:
    """(kind, name, one-line summary) of an object for monitor's text output."""
    if names.VGPU_IFACE in ifaces:
        v = ifaces[names.VGPU_IFACE]
        where = f"{v['Type'] or '?'} on {v['Parent']}"
        return "vgpu", v["Name"] or v["UUID"], f"{v['State']} ({where}" + (
            ", not created by gvtd)" if not v["Managed"] else ")")
    if names.PARENT_IFACE in ifaces:
        p = ifaces[names.PARENT_IFACE]
        return "parent", p["Address"], "registered" if p["Registered"] else "not registered"
    if names.MANAGER_IFACE in ifaces:
        return "manager", "gvtd", ifaces[names.MANAGER_IFACE].get("State", "")
    return "object", path, ""


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return f"[{len(value)} entries]"
    return str(value) if value != "" else '""'


async def cmd_monitor(c: Client, args: argparse.Namespace) -> None:
    """Subscribe first, then read the current state, then stream every change."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Message | None] = asyncio.Queue()

    def on_message(msg: Message) -> None:
        if msg.message_type == MessageType.SIGNAL:
            queue.put_nowait(msg)

    c.bus.add_message_handler(on_message)
    for rule in (f"type='signal',sender='{names.BUS_NAME}'",
                 f"type='signal',sender='{BUS_DRIVER}',member='NameOwnerChanged',"
                 f"arg0='{names.BUS_NAME}'"):
        await c.call("AddMatch", "s", [rule], path="/org/freedesktop/DBus",
                     interface=BUS_DRIVER, destination=BUS_DRIVER)
    gvtd = await c.owner()  # after subscribing: a later change of owner is a signal
    loop.add_signal_handler(signal.SIGINT, queue.put_nowait, None)
    loop.add_signal_handler(signal.SIGTERM, queue.put_nowait, None)
    objects = await c.objects()
    objects[names.ROOT_PATH] = {names.MANAGER_IFACE: await c.manager()}

    def out(event: str, path: str, ifaces: dict[str, Any], text: str,
            props: dict[str, Any] | None = None) -> None:
        kind, name, summary = _describe(path, ifaces)
        if args.json:
            print(json.dumps({"event": event, "kind": kind, "name": name, "path": path,
                              "properties": props if props is not None else
                              next(iter(ifaces.values()), {})}), flush=True)
        else:
            print(f"{kind} {name}: {text or summary}", flush=True)

    for path, ifaces in sorted(objects.items()):
        out("present", path, ifaces, "")
    if args.json:
        print(json.dumps({"event": "ready"}), flush=True)
    else:
        print("-- watching for changes; Ctrl-C stops", flush=True)
    while (msg := await queue.get()) is not None:
        body = _plain(msg.body)
        if msg.member == "NameOwnerChanged" and msg.sender == BUS_DRIVER \
                and msg.signature == "sss" and body[0] == names.BUS_NAME:
            if not body[2]:
                raise ClientError("gvtd went away (it stopped or crashed); "
                                  "`systemctl status gvtd` says why.")
            gvtd = body[2]
            continue
        if msg.sender != gvtd:
            continue  # not gvtd's: signals sent straight to this connection pass any rule
        if msg.member == "InterfacesAdded":
            objects[body[0]] = body[1]
            out("added", body[0], body[1], "added, " + _describe(body[0], body[1])[2])
        elif msg.member == "InterfacesRemoved":
            gone = objects.pop(body[0], {iface: {} for iface in body[1]})
            out("removed", body[0], gone, "removed", props={})
        elif msg.member == "PropertiesChanged" and msg.path in objects:
            iface, changed = body[0], body[1]
            before = objects[msg.path].setdefault(iface, {})
            text = ", ".join(f"{k} {_short(before.get(k, ''))} -> {_short(v)}"
                             for k, v in sorted(changed.items()))
            before.update(changed)
            out("changed", msg.path, objects[msg.path], text, props=changed)


def cmd_setup(args: argparse.Namespace) -> int:
    """Local, without the bus: gvtd must never edit the boot configuration for a caller."""
    from gvtd import bootcfg
    from gvtd.client import setup

    if not args.root.is_dir():
        raise ClientError(f"--root {args.root}: no such directory; it names the system to set "
                          "up (default /).")
    root = bootcfg.Root(args.root)
    try:
        return (setup.revert if args.revert else setup.setup)(root, args.dry_run, sys.stdout)
    except (setup.SetupError, bootcfg.BootError) as e:
        raise ClientError(str(e)) from None
    except OSError as e:  # a file setup had checked, gone or unwritable since
        raise ClientError(f"{e.filename or args.root}: {e.strerror}.") from None


SETUP_EPILOG = """\
examples:
  gvt-client setup --dry-run        the changes as a diff, and the commands; needs no root
  sudo gvt-client setup             apply them, then reboot
  sudo gvt-client setup --revert    put back every file setup changed, byte for byte

It adds what `gvt-client doctor` asks of the kernel command line (i915.enable_gvt=1
kvm.ignore_msrs=1 intel_iommu=on i915.enable_guc=0) through the host's boot tooling: a
file in /etc/default/grub.d and update-grub (or grub-mkconfig) for GRUB, /etc/kernel/cmdline
and kernel-install for systemd-boot, grubby where it keeps the entries; and the modules
(kvmgt, mdev, vfio_iommu_type1) in /etc/modules-load.d/gvtd.conf. An unknown boot loader
gets the exact step to do by hand, and exit status 1.
"""


def _attr(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    bus = common.add_mutually_exclusive_group()
    bus.add_argument("--system", dest="bus", action="store_const", const="system",
                     default=argparse.SUPPRESS, help="talk to gvtd on the system bus (default)")
    bus.add_argument("--session", dest="bus", action="store_const", const="session",
                     default=argparse.SUPPRESS,
                     help="talk to a gvtd on the session bus (gvtd --simulate)")
    reads = argparse.ArgumentParser(add_help=False)
    reads.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print JSON for scripts")

    p = argparse.ArgumentParser(
        prog="gvt-client", parents=[common, reads], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Control gvtd, the Intel GVT-g vGPU daemon.")
    p.add_argument("--version", action="version", version=f"gvt-client {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, func: Any, read: bool = False) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help,
                           parents=[common, reads] if read else [common])
        s.set_defaults(func=func)
        return s

    add("status", "show the daemon's state, vGPUs and problems", cmd_status, read=True)
    add("list", "list defined and present vGPUs", cmd_list, read=True)
    add("types", "list the mdev types of every parent, with what still fits", cmd_types, read=True)
    add("parents", "list the mdev parents (GPUs)", cmd_parents, read=True)
    d = add("define", "define a persistent vGPU", cmd_define)
    d.add_argument("name", help="a name for it, e.g. the VM's name")
    kind = d.add_mutually_exclusive_group(required=True)
    kind.add_argument("--type", help="an mdev type id, e.g. i915-GVTg_V5_4 (see `types`), or "
                      "vf: a virtual function of an SR-IOV parent")
    kind.add_argument("--min-resolution", metavar="WxH",
                      help="let gvtd pick the smallest GVT-g type with at least this resolution")
    d.add_argument("--parent", help="parent device (default: auto)")
    d.add_argument("--uuid", help="UUID to use (default: a new one)")
    d.add_argument("--start", choices=["auto", "on-demand", "manual"],
                   help="auto: exist whenever the parent does (default); on-demand: only while "
                        "its domain runs; manual: only on `create`")
    d.add_argument("--domain", help="libvirt domain that uses it")
    d.add_argument("--attr", type=_attr, action="append", metavar="NAME=VALUE",
                   help="sysfs attribute to write after creation (repeatable, in order)")
    for name, help in (("undefine", "delete a definition (and the vGPU gvtd created for it)"),
                       ("create", "create a defined vGPU now"),
                       ("remove", "remove a vGPU gvtd created (its definition stays)")):
        s = add(name, help, cmd_simple)
        s.add_argument("name", help="vGPU name or UUID")
    add("reload", "re-read /etc/gvtd after editing it by hand", cmd_reload)
    s = add("start", "create the vGPUs a libvirt domain uses, then start it; a GL display "
            "(spice-gl, gtk-gl) opens in the desktop session you run it from", cmd_start)
    s.add_argument("domain", help="libvirt domain name")
    s = add("attach", "add a vGPU to a domain's XML the way that works (an mdev: display, "
            "OpRegion, PCI slot; an SR-IOV VF: its PCI address, ROM)", cmd_attach)
    s.add_argument("domain", help="libvirt domain name")
    s.add_argument("vgpu", help="vGPU name or UUID")
    s.add_argument("--display", choices=["spice-gl", "gtk-gl", "vnc", "none"],
                   help="an mdev vGPU's display: spice-gl: SPICE with GL on the GPU "
                   "(default; view with virt-viewer; works on X11 and Wayland); gtk-gl: "
                   "QEMU's own window, fastest (on Wayland under Xwayland); vnc or none: no "
                   "vGPU display. `gvt-client doctor` in your session says which works "
                   "there. An SR-IOV VF has none: its picture comes from Looking Glass, RDP "
                   "or Sunshine in the guest")
    s.add_argument("--x-display", metavar=":N",
                   help="for gtk-gl started outside gvtd (virsh start): the X display QEMU "
                   "opens its window on (default :0); `gvt-client start` uses your "
                   "session's")
    rom = s.add_mutually_exclusive_group()
    rom.add_argument("--rom", metavar="FILE",
                     help="an SR-IOV VF's option ROM (such as a GOP ROM some Windows drivers "
                     "want): a file under /usr/share that everyone may read and only root "
                     "may change")
    rom.add_argument("--no-rom-bar", action="store_true",
                     help="an SR-IOV VF without a ROM BAR (<rom bar='off'/>), for guests "
                     "whose driver fails with the VF's own ROM")
    s.add_argument("--no-audio", dest="audio", action="store_false",
                   help="no sound card (and take out the one an earlier attach added); by "
                        "default the VM's sound plays on your session's sound server "
                        "(PulseAudio), which this command opens to QEMU's user alone")
    s.add_argument("--dry-run", action="store_true",
                   help="print the change as a unified diff and change nothing")
    s = add("detach", "remove a vGPU from a domain's XML", cmd_detach)
    s.add_argument("domain", help="libvirt domain name")
    s.add_argument("vgpu", help="vGPU name or UUID")
    s = add("tune", "tune a domain's XML as the guide does for Windows: CPU topology and "
            "pinning on SMT siblings, Hyper-V enlightenments, SPICE for a local viewer; "
            "warns about the rest of its advice", cmd_tune)
    s.add_argument("domain", help="libvirt domain name")
    s.add_argument("--dry-run", action="store_true",
                   help="print the change as a unified diff and change nothing")
    s.add_argument("--revert", action="store_true",
                   help="put back the XML from before the last tune that changed it")
    s.add_argument("--vcpus", type=int, metavar="N",
                   help="guest vCPUs, even on an SMT host (default: every host thread "
                        "outside CPU 0's core)")
    s.add_argument("--no-pinning", dest="pinning", action="store_false",
                   help="no vcpupin (and remove an earlier one)")
    s.add_argument("--use-cpu0", dest="first_core", action="store_true",
                   help="allow CPU 0's core, which is otherwise left to the host")
    s.add_argument("--no-cpu", dest="cpu", action="store_false",
                   help="leave the vCPUs, topology and pinning alone")
    s.add_argument("--no-hyperv", dest="hyperv", action="store_false",
                   help="leave the Hyper-V enlightenments alone")
    s.add_argument("--no-spice", dest="spice", action="store_false",
                   help="leave the SPICE display alone")
    newvm.add_parser(add)
    view.add_parser(add)
    s = add("stop", "shut a domain down, then remove its on-demand vGPUs", cmd_stop)
    s.add_argument("domain", help="libvirt domain name")
    s.add_argument("--force", action="store_true",
                   help="turn it off if it has not shut down when the timeout ends")
    s.add_argument("--timeout", type=int, default=120, metavar="SECONDS",
                   help="how long to wait for the guest to shut down (default 120)")
    s = add("import-mdevctl", "define mdevctl's persistent mdevs in gvtd (those mdevctl "
            "starts at boot only with --take-over)", cmd_import_mdevctl)
    s.add_argument("--dir", type=Path, default=Path("/etc/mdevctl.d"),
                   help="mdevctl's definitions (default /etc/mdevctl.d)")
    s.add_argument("--dry-run", action="store_true",
                   help="show what would be defined, and under which names; define nothing")
    s.add_argument("--take-over", action="store_true",
                   help="also import definitions mdevctl starts at boot, as start auto, and "
                        "make the running mdevs gvtd's own, removed like those it creates "
                        "(without it they are adopted: used, never removed); then remove them "
                        "from mdevctl (mdevctl undefine --uuid UUID)")
    s = add("export", "write gvtd's definitions in another tool's format", cmd_export)
    s.add_argument("--format", choices=["mdevctl"], required=True,
                   help="mdevctl: its JSON, as `mdevctl list --defined --dumpjson` prints it")
    s.add_argument("--dir", type=Path, metavar="DIR",
                   help="write one file per vGPU as mdevctl keeps them (DIR/PARENT/UUID) "
                        "instead of printing")
    s = add("desktop-entry", "install a launcher in your application menu that starts a VM "
            "and opens its display (gvt-client view --start); written as you, under "
            "$XDG_DATA_HOME (default ~/.local/share), with its icon", cmd_desktop_entry)
    s.set_defaults(local=True)
    s.add_argument("domain", help="libvirt domain name")
    s.add_argument("--remove", action="store_true",
                   help="take away the launcher and icon this command installed for the "
                        "domain (and nothing else)")
    add("doctor", "check the host for what GVT-g (or SR-IOV) needs, with the fix for each "
        "problem (exit status 1 when a check fails)", cmd_doctor, read=True)
    add("monitor", "print every change as it happens (JSON lines with --json) until "
        "interrupted", cmd_monitor, read=True)
    s = sub.add_parser("setup", help="set up this host's kernel command line and modules for "
                       "GVT-g through its boot tooling (as root; reboot after it)",
                       description="Set up this host's kernel command line and modules for "
                       "GVT-g through its own boot tooling.", epilog=SETUP_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.set_defaults(func=cmd_setup, local=True)
    s.add_argument("--dry-run", action="store_true",
                   help="print the changes as a unified diff and the commands it would run, "
                        "and change nothing (works as any user)")
    s.add_argument("--revert", action="store_true",
                   help="put back every file setup changed, byte for byte, and run the boot "
                        "tool again")
    s.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                   help="work on the system installed in DIR, as systemctl --root: its files, "
                        "its kernel command line (DIR/proc/cmdline), its tools run through "
                        "chroot (default /)")
    return p


async def run(args: argparse.Namespace) -> None:
    bus_type = BusType.SESSION if getattr(args, "bus", "system") == "session" else BusType.SYSTEM
    try:
        bus = await MessageBus(bus_type=bus_type, negotiate_unix_fd=True).connect()
    except Exception as e:
        which = "session" if bus_type == BusType.SESSION else "system"
        raise ClientError(f"Cannot connect to the D-Bus {which} bus: {e}") from e
    try:
        await args.func(Client(bus), args)
    finally:
        bus.disconnect()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        if getattr(args, "local", False):
            return int(args.func(args))
        asyncio.run(run(args))
    except ClientError as e:
        print(f"gvt-client: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

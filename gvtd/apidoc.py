"""docs/dbus-api.md, generated from the interface XML and the code behind it.

Members, signatures and their docs come from dbus-policy/io.github.gvtd1.xml (an
org.freedesktop.DBus.DocString annotation, else the XML comment just before the element);
the polkit action of each method from its @authorized gate (gvtd/bus/auth.py), what each
action means from the shipped polkit policy, and the errors from gvtd/errors.py. So the page
says what the daemon does, and tests/unit/test_apidoc.py fails when the committed copy is
stale:

    python3 -m gvtd.apidoc [OUTPUT]      # in a source tree; `make docs` writes docs/dbus-api.md
"""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from gvtd import errors, names

ROOT = Path(__file__).resolve().parent.parent
XML = ROOT / "dbus-policy" / "io.github.gvtd1.xml"
POLICY = ROOT / "dbus-policy" / "io.github.gvtd1.policy"
DOCSTRING = "org.freedesktop.DBus.DocString"

# Where each interface lives, with an example path (path elements escaped as names.py does).
OBJECTS = {
    names.MANAGER_IFACE: (names.ROOT_PATH, names.ROOT_PATH),
    names.PARENT_IFACE: (f"{names.PARENT_PREFIX}/<escaped address>",
                         names.parent_path("0000:00:02.0")),
    names.VGPU_IFACE: (f"{names.VGPU_PREFIX}/<escaped uuid>",
                       names.vgpu_path("fff6f017-3417-4ad3-b05e-17ae3e1a4615")),
    names.DOMAIN_IFACE: (f"{names.DOMAIN_PREFIX}/<escaped name>", names.domain_path("win10")),
}


def _text(comment: str) -> str:
    """An XML comment as Markdown paragraphs: lines joined, blank lines kept, and `<`
    escaped so that `<qemu:override>` shows instead of vanishing as an HTML tag."""
    paragraphs = re.split(r"\n\s*\n", comment.strip())
    return "\n\n".join(" ".join(p.split()).replace("<", "&lt;") for p in paragraphs)


def _docs(parent: ET.Element) -> dict[ET.Element, str]:
    """Each child element's doc: its DocString annotation, else the comment before it."""
    out: dict[ET.Element, str] = {}
    last = ""
    for child in parent:
        if child.tag is ET.Comment:
            last = _text(child.text or "")
            continue
        note = child.find(f"annotation[@name='{DOCSTRING}']")
        out[child] = _text(note.get("value", "")) if note is not None else last
        last = ""
    return out


def polkit_actions() -> dict[str, str]:
    """Method name -> polkit action, read from the @authorized gates of the bus objects."""
    from gvtd.bus import objects

    out = {}
    for cls in (objects.ManagerInterface, objects.ParentInterface, objects.VgpuInterface,
                objects.DomainInterface):
        for attr in vars(cls).values():
            action = getattr(attr, "polkit_action", None)
            if action is not None:
                out[attr.__name__] = action
    return out


def root_only() -> set[str]:
    """Methods that only root may call, read from the @root_only gates of the bus objects."""
    from gvtd.bus import objects

    return {attr.__name__ for cls in (objects.ManagerInterface, objects.ParentInterface,
                                      objects.VgpuInterface, objects.DomainInterface)
            for attr in vars(cls).values() if getattr(attr, "root_only", False)}


def policy(path: Path = POLICY) -> dict[str, tuple[str, str]]:
    """polkit action id -> (description, what an active local session gets by default)."""
    out = {}
    for action in ET.parse(path).getroot().iter("action"):
        out[action.get("id", "")] = (action.findtext("description", ""),
                                     action.findtext("defaults/allow_active", ""))
    return out


def _arg(a: ET.Element) -> str:
    return f"{a.get('type')} {a.get('name')}" if a.get("name") else str(a.get("type"))


def _signature(m: ET.Element) -> str:
    ins = ", ".join(_arg(a) for a in m.iter("arg") if a.get("direction", "in") == "in")
    outs = ", ".join(_arg(a) for a in m.iter("arg") if a.get("direction") == "out")
    return f"{m.get('name')}({ins})" + (f" → {outs}" if outs else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n\n", "<br>")


def _interface(iface: ET.Element, doc: str, actions: dict[str, str]) -> list[str]:
    name = iface.get("name", "")
    pattern, example = OBJECTS.get(name, ("", ""))
    lines = [f"## {name}", ""]
    if pattern:
        lines += [f"Object: `{pattern}`" + (f", e.g. `{example}`" if example != pattern else ""),
                  ""]
    if doc:
        lines += [doc, ""]
    docs = _docs(iface)
    methods = [m for m in iface if m.tag == "method"]
    if methods:
        lines += ["### Methods", ""]
    for m in methods:
        action = actions.get(m.get("name", ""))
        lines += [f"#### {m.get('name')}", "", f"    {_signature(m)}", ""]
        if docs[m]:
            lines += [docs[m], ""]
        if m.get("name", "") in root_only():
            lines += ["Authorization: root only (the bus policy and gvtd refuse every "
                      "other caller; polkit is not asked).", ""]
            continue
        lines += [f"Authorization: polkit action `{action}`." if action else
                  "Authorization: none (a read, open to every caller).", ""]
    signals = [s for s in iface if s.tag == "signal"]
    if signals:
        lines += ["### Signals", ""]
    for s in signals:
        args = ", ".join(_arg(a) for a in s.iter("arg"))
        lines += [f"#### {s.get('name')}", "", f"    {s.get('name')}({args})", ""]
        if docs[s]:
            lines += [docs[s], ""]
    props = [p for p in iface if p.tag == "property"]
    if props:
        lines += ["### Properties", "", "Each change is announced with PropertiesChanged.", "",
                  "| property | type | access | meaning |", "| --- | --- | --- | --- |"]
        lines += [f"| `{p.get('name')}` | `{p.get('type')}` | {p.get('access')} | "
                  f"{_cell(docs[p])} |" for p in props]
        lines += [""]
    return lines


def render(xml_text: str | None = None, actions: dict[str, str] | None = None) -> str:
    """The Markdown page for an interface XML (default: the shipped one)."""
    xml_text = XML.read_text(encoding="utf-8") if xml_text is None else xml_text
    actions = polkit_actions() if actions is None else actions
    head = re.match(r"(?s)(?:<\?.*?\?>|<!DOCTYPE[^>]*>|\s)*<!--(.*?)-->", xml_text)
    root = ET.fromstring(xml_text, parser=ET.XMLParser(
        target=ET.TreeBuilder(insert_comments=True)))
    known = policy()
    used: dict[str, list[str]] = {}
    for method, action in actions.items():
        used.setdefault(action, []).append(method)
    lines = ["# gvtd's D-Bus API", "",
             "<!-- Generated by `python3 -m gvtd.apidoc` (`make docs`) from "
             "dbus-policy/io.github.gvtd1.xml, the polkit gates and gvtd/errors.py; "
             "do not edit. -->", ""]
    if head:
        lines += [_text(head.group(1)), ""]
    lines += ["## Names", "", "| what | name |", "| --- | --- |",
              f"| bus name (system bus) | `{names.BUS_NAME}` |"]
    lines += [f"| `{iface}` object | `{pattern}` |" for iface, (pattern, _) in OBJECTS.items()]
    lines += ["", "## Signals", "",
              "Scripts watch these instead of polling (see examples/):", "",
              f"- `{names.OBJECT_MANAGER_IFACE}.InterfacesAdded(o path, a{{sa{{sv}}}} "
              f"interfaces)` and `InterfacesRemoved(o path, as interfaces)`, from "
              f"`{names.ROOT_PATH}`, when a vGPU, parent or domain object comes or goes;",
              f"- `{names.PROPERTIES_IFACE}.PropertiesChanged(s interface, a{{sv}} changed, "
              "as invalidated)`, from the object whose properties changed.", "",
              "## Authorization", "",
              "Reads (properties, `Diagnose`, `GetManagedObjects`) are open to everyone. Each "
              "method that changes something asks polkit about the caller (root is always "
              "allowed) with the details `vgpu` and `domain` naming what it touches, so that "
              "a rule can grant one user one VM (docs/security.md). "
              f"{', '.join(f'`{m}`' for m in sorted(root_only()))}, for the libvirt hook, "
              "are root's alone: polkit is not asked.", "",
              "| action | what | active local session | methods |", "| --- | --- | --- | --- |"]
    for action, methods in sorted(used.items()):
        text, active = known.get(action, ("", ""))
        lines.append(f"| `{action}` | {text} | {active} | "
                     f"{', '.join(f'`{m}`' for m in sorted(methods))} |")
    lines += ["", "## Errors", "",
              "Every error carries a sentence a person can act on.", "",
              "| error | when |", "| --- | --- |"]
    lines += [f"| `{names.ERROR_PREFIX}{e.name}` | {' '.join((e.__doc__ or '').split())} |"
              for e in errors.ALL]
    lines += [f"| `{names.ACCESS_DENIED}` | polkit (or the bus) refused the caller; "
              "nothing was changed. |", ""]
    docs = _docs(root)
    for iface in root.iter("interface"):
        lines += _interface(iface, docs.get(iface, ""), actions)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m gvtd.apidoc",
                                 description="Write docs/dbus-api.md from the interface XML.")
    ap.add_argument("output", type=Path, nargs="?", help="file to write (default: stdout)")
    args: Any = ap.parse_args(argv)
    page = render()
    if args.output is None:
        sys.stdout.write(page)
    else:
        args.output.write_text(page, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

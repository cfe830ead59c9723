"""docs/dbus-api.md is what gvtd.apidoc makes of the interface XML and the code, today."""

import xml.etree.ElementTree as ET
from pathlib import Path

from gvtd import apidoc, errors, names

ROOT = Path(__file__).resolve().parents[2]


def test_committed_page_is_current() -> None:
    committed = (ROOT / "docs" / "dbus-api.md").read_text(encoding="utf-8")
    assert committed == apidoc.render(), "docs/dbus-api.md is stale: run `make docs`"


def test_actions_come_from_the_gates() -> None:
    actions = apidoc.polkit_actions()
    assert actions["StartDomain"] == names.ACTION_DOMAIN
    assert actions["Define"] == names.ACTION_MANAGE
    assert actions["RemoveVGPU"] == names.ACTION_VGPU
    assert "Diagnose" not in actions  # a read
    methods = {m.get("name") for m in ET.parse(apidoc.XML).iter("method")}
    assert set(actions) <= methods
    assert apidoc.root_only() == {"PrepareDomain", "ReleaseDomain"}  # the hook's
    page = apidoc.render()
    for member in methods:
        section = page.split(f"#### {member}\n", 1)[1].split("####", 1)[0]
        expected = f"polkit action `{actions[member]}`" if member in actions else \
            "root only" if member in apidoc.root_only() else "none (a read"
        assert expected in section, member


def test_every_error_and_member_is_documented() -> None:
    page = apidoc.render()
    for e in errors.ALL:
        assert f"`{names.ERROR_PREFIX}{e.name}`" in page
        assert e.__doc__ and " ".join(e.__doc__.split()) in page
    for member in ("Define", "StartDomain", "AttachVGPU", "Diagnose"):
        assert f"#### {member}\n" in page
    assert "| `Problems` | `a(ssss)` | read |" in page


def test_docstring_annotation_wins_over_comment_and_signals_are_listed() -> None:
    xml = """<node><!-- head --><interface name="io.github.gvtd1.Manager">
      <!-- from the comment -->
      <method name="Poke"><arg name="x" direction="in" type="s"/>
        <annotation name="org.freedesktop.DBus.DocString" value="from the annotation"/>
      </method>
      <!-- it happened -->
      <signal name="Poked"><arg name="x" type="s"/></signal>
      <property name="P" type="b" access="read"/>
    </interface></node>"""
    page = apidoc.render(xml, actions={"Poke": names.ACTION_DOMAIN})
    poke = page.split("#### Poke\n", 1)[1]
    assert "from the annotation" in poke and "from the comment" not in page
    assert f"polkit action `{names.ACTION_DOMAIN}`" in poke
    assert "    Poked(s x)" in page and "it happened" in page
    assert "| `P` | `b` | read |  |" in page

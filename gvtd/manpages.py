"""Man pages and the commented /etc/gvtd/gvtd.toml, generated from the code itself.

gvtd(8) and gvt-client(1) come from the argparse parsers the programs use, gvtd.toml(5) and
the shipped gvtd.toml from the pydantic models that validate the files, so none of them can
say something the code does not do. Packages run this at build time:

    python3 -m gvtd.manpages OUTDIR      # writes gvtd.8 gvt-client.1 gvtd.toml.5 gvtd.toml
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from gvtd import __version__
from gvtd.config import Definition, Settings

SOURCE = f"gvtd {__version__}"


def _date() -> str:
    """Reproducible builds set SOURCE_DATE_EPOCH; the page's date must not change otherwise."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch
            else datetime.datetime.now(datetime.timezone.utc))
    return when.strftime("%Y-%m-%d")


def esc(text: str) -> str:
    """Text for roff: backslashes and hyphens escaped, no line may start a request."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line
                     for line in out.split("\n"))


def _header(name: str, section: int, title: str, summary: str) -> list[str]:
    return [f'.TH "{name.upper()}" "{section}" "{_date()}" "{SOURCE}" "{title}"',
            ".SH NAME", f"{esc(name)} \\- {esc(summary)}"]


def _verbatim(text: str) -> list[str]:
    return [".PP", ".nf", ".RS 4", esc(text.rstrip("\n")), ".RE", ".fi"]


def _option_label(action: argparse.Action) -> str:
    """--opt VALUE, -h, or a positional's NAME, in bold/italic as man pages write them."""
    if not action.option_strings:
        return f"\\fI{esc(action.metavar or action.dest)}\\fR"
    if action.nargs == 0:
        return ", ".join(f"\\fB{esc(o)}\\fR" for o in action.option_strings)
    if action.choices:
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        value = action.metavar or action.dest.upper()
    return ", ".join(f"\\fB{esc(o)}\\fR \\fI{esc(str(value))}\\fR"
                     for o in action.option_strings)


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions  # argparse keeps no public list of them
            if not isinstance(a, argparse._SubParsersAction) and a.help != argparse.SUPPRESS]


def _items(actions: list[argparse.Action]) -> list[str]:
    lines = []
    for a in actions:
        lines += [".TP", _option_label(a), esc(a.help or "")]
    return lines


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of every subcommand, in the order --help lists them."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in action._choices_actions}
            out += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return out


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage: ").split())


def _epilog(parser: argparse.ArgumentParser) -> list[str]:
    """An epilog of `heading:` blocks (RawDescriptionHelpFormatter) as man sections."""
    lines: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if block:
            lines.extend(_verbatim(textwrap.dedent("\n".join(block))))
            block.clear()

    for line in (parser.epilog or "").splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            flush()
            lines += [".SH " + esc(line[:-1].upper())]
        elif line.strip():
            block.append(line)
    flush()
    return lines


def gvtd_page() -> str:
    from gvtd.daemon import build_parser

    p = build_parser()
    lines = _header("gvtd", 8, "System Administration", "Intel GVT-g virtual GPU daemon")
    lines += [".SH SYNOPSIS", ".nf", esc(_usage(p)), ".fi", ".SH DESCRIPTION",
              esc(" ".join((p.description or "").split())),
              ".PP",
              "It is started by systemd as \\fBgvtd.service\\fR (or activated on the system "
              "bus as \\fBio.github.gvtd1\\fR) and controlled with \\fBgvt\\-client\\fR(1).",
              ".SH OPTIONS", *_items(_options(p))]
    lines += _epilog(p)
    lines += [".SH FILES", ".TP", "\\fI/etc/gvtd/gvtd.toml\\fR", "daemon settings, see "
              "\\fBgvtd.toml\\fR(5)", ".TP", "\\fI/etc/gvtd/vgpus.d/NAME.toml\\fR",
              "one vGPU definition per file, see \\fBgvtd.toml\\fR(5)", ".TP",
              "\\fI/var/lib/gvtd\\fR", "which mdevs gvtd created (it never removes others)",
              ".SH SEE ALSO", "\\fBgvt\\-client\\fR(1), \\fBgvtd.toml\\fR(5), "
              "\\fBmdevctl\\fR(8), \\fBvirsh\\fR(1)"]
    return "\n".join(lines) + "\n"


def gvt_client_page() -> str:
    from gvtd.client.main import build_parser

    p = build_parser()
    lines = _header("gvt-client", 1, "User Commands", "control gvtd, the Intel GVT-g vGPU daemon")
    lines += [".SH SYNOPSIS", ".nf", esc(_usage(p)), ".fi", ".SH DESCRIPTION",
              esc(" ".join((p.description or "").split())) + " It talks to \\fBgvtd\\fR(8) over "
              "its D\\-Bus API \\fBio.github.gvtd1\\fR on the system bus.",
              ".PP", "Exit status: 0 success, 1 the call failed (the message says why), "
              "2 usage error.",
              ".SH OPTIONS", *_items(_options(p)), ".SH COMMANDS"]
    for name, help_, sub in subcommands(p):
        lines += [".SS " + esc(_usage(sub)), esc(help_)]
        # the options every command shares are under OPTIONS already
        shared = {o for a in _options(p) for o in a.option_strings}
        own = [a for a in _options(sub) if not set(a.option_strings) & shared]
        if own:
            lines += [".RS 4", *_items(own), ".RE"]
    lines += _epilog(p)
    lines += [".SH SEE ALSO", "\\fBgvtd\\fR(8), \\fBgvtd.toml\\fR(5), \\fBbusctl\\fR(1)"]
    return "\n".join(lines) + "\n"


def type_text(field: FieldInfo) -> str:
    """The value a setting takes, in words: a string, a boolean, or its allowed values."""
    ann = field.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) is typing.Literal:
        return "one of " + ", ".join(f'"{v}"' for v in typing.get_args(ann))
    if ann is bool:
        return "boolean"
    if typing.get_origin(ann) is list:
        return "array of [name, value] pairs"
    if typing.get_origin(ann) is dict:
        return "inline table of numbers"
    if len(args) == 1 and args[0] is not ann:
        return "string"
    return "string"


def _assignment(name: str, value: Any) -> str:
    """`name = value` on one line: tomli_w writes a table as a header, an empty one inline
    is `{}` (the only table default a setting has)."""
    if isinstance(value, dict) and not value:
        return f"{name} = {{}}"
    return tomli_w.dumps({name: value}).strip()


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default is None:
        return "unset"
    return "default " + _assignment("x", field.default).removeprefix("x = ")


def _model_items(model: type[BaseModel]) -> list[str]:
    lines = []
    for name, field in model.model_fields.items():
        lines += [".TP", f"\\fB{esc(name)}\\fR ({esc(type_text(field))}; "
                  f"{esc(_default_text(field))})", esc(field.description or "")]
    return lines


def gvtd_toml_page() -> str:
    lines = _header("gvtd.toml", 5, "File Formats", "gvtd's settings and vGPU definitions")
    lines += [".SH SYNOPSIS", "\\fI/etc/gvtd/gvtd.toml\\fR", ".br",
              "\\fI/etc/gvtd/vgpus.d/NAME.toml\\fR",
              ".SH DESCRIPTION",
              "Both files are TOML. Every setting of \\fIgvtd.toml\\fR is optional. A file "
              "or value that fails validation is reported with file, field and reason (in "
              "the journal and in \\fBgvt\\-client status\\fR), and the rest keep working. "
              "After editing by hand, run \\fBgvt\\-client reload\\fR.",
              ".SH SETTINGS (gvtd.toml)", *_model_items(Settings),
              ".SH VGPU DEFINITIONS (vgpus.d/NAME.toml)",
              "One vGPU per file. NAME is 1 to 64 letters, digits, \\(aq_\\(aq, \\(aq.\\(aq "
              "or \\(aq\\-\\(aq; \\fBgvt\\-client define\\fR writes the file atomically.",
              *_model_items(Definition),
              ".SH EXAMPLE",
              *_verbatim('uuid = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"\n'
                         'min_resolution = "1920x1200"\nstart = "on-demand"\n'
                         'domain = "win10"\n'),
              ".SH SEE ALSO", "\\fBgvtd\\fR(8), \\fBgvt\\-client\\fR(1), \\fBmdevctl\\fR(8)"]
    return "\n".join(lines) + "\n"


def settings_file() -> str:
    """/etc/gvtd/gvtd.toml as shipped: every setting, commented out at its default."""
    out = ["# gvtd settings; gvtd.toml(5) describes each. Every setting is optional and",
           "# shown at its default: uncomment one to change it, then `systemctl restart gvtd`.",
           "# vGPU definitions live in vgpus.d/NAME.toml (`gvt-client define`)."]
    for name, field in Settings.model_fields.items():
        out.append("")
        out += ["# " + line for line in textwrap.wrap(
            f"{field.description} ({type_text(field)}).", 88, break_on_hyphens=False)]
        out.append("#" + _assignment(name, field.default))
    return "\n".join(out) + "\n"


FILES = {"gvtd.8": gvtd_page, "gvt-client.1": gvt_client_page,
         "gvtd.toml.5": gvtd_toml_page, "gvtd.toml": settings_file}


def write_files(outdir: Path, files: dict[str, Any]) -> list[Path]:
    """Write each generated file (name -> function making its text) into outdir."""
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in files.items():
        path = outdir / name
        path.write_text(make(), encoding="utf-8")
        written.append(path)
    return written


def write_all(outdir: Path) -> list[Path]:
    return write_files(outdir, FILES)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m gvtd.manpages",
                                 description="Write gvtd's man pages and gvtd.toml.")
    ap.add_argument("outdir", type=Path)
    args = ap.parse_args(argv)
    for path in write_all(args.outdir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every `gvt-client ...` command the docs show parses with gvt-client's real parser, so the
docs cannot drift from the CLI: command lines in code blocks parse in full, inline mentions
name a real subcommand and real options."""

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from gvtd.client.main import build_parser
from gvtd.manpages import subcommands

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:^|(?<=[\s/(]))gvt-client(?=\s|$)")
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>&1"}


def _code_lines(text: str) -> list[str]:
    """Lines of fenced and indented code blocks, continuation lines joined."""
    out: list[str] = []
    fenced = False
    previous_blank = True
    in_indented = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        indented = line.startswith("    ") and (previous_blank or in_indented)
        in_indented = indented or (in_indented and not line.strip())
        previous_blank = not line.strip()
        if fenced or indented:
            if out and out[-1].endswith("\\"):
                out[-1] = out[-1][:-1].rstrip() + " " + line.strip()
            else:
                out.append(line.strip())
    return out


def _argv(fragment: str) -> list[str]:
    """The arguments after `gvt-client`, up to a comment or a shell operator."""
    tokens = shlex.split(fragment, comments=True)
    for i, token in enumerate(tokens):
        if token in SHELL_OPERATORS:
            return tokens[:i]
    return tokens


def _variants(argv: list[str]) -> list[list[str]]:
    """An optional `[--force]` in a usage line: with and without it."""
    out = [[]]
    for token in argv:
        if token.startswith("[") and token.endswith("]"):
            out = [v + extra for v in out for extra in ([], token[1:-1].split())]
        else:
            out = [v + [token] for v in out]
    return out


def commands(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    """(full command lines from code blocks, inline `gvt-client ...` mentions)."""
    text = path.read_text(encoding="utf-8")
    lines = []
    for line in _code_lines(text):
        for m in COMMAND.finditer(line):
            lines += _variants(_argv(line[m.end():]))
            break
    inline = [_argv(span[len("gvt-client"):]) for span in re.findall(r"`(gvt-client[^`]*)`", text)]
    return lines, inline


def _parses(argv: list[str]) -> str | None:
    """None when the real parser accepts argv, else what it said."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as e:
        return None if e.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


def _mentions_real_options(argv: list[str]) -> str | None:
    """An inline mention may leave out arguments; its command and options must exist."""
    parser = build_parser()
    subs = {name: sub for name, _, sub in subcommands(parser)}
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        return None if all(a in _options(parser) for a in argv) else f"unknown option in {argv}"
    sub = subs.get(words[0])
    if sub is None:
        return f"no command {words[0]!r}"
    known = _options(parser) | _options(sub)
    unknown = [a.split("=")[0] for a in argv if a.startswith("-") and a.split("=")[0] not in known]
    return f"unknown options {unknown}" if unknown else None


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_documented_command_parses(path: Path) -> None:
    lines, inline = commands(path)
    bad = [(argv, why) for argv in lines if (why := _parses(argv))]
    bad += [(argv, why) for argv in inline if (why := _mentions_real_options(argv))]
    assert not bad, f"{path.name}: commands gvt-client does not accept: {bad}"


def test_the_guide_shows_each_step_as_a_command() -> None:
    lines, _ = commands(ROOT / "docs" / "guide.md")
    shown = {argv[0] for argv in lines if argv}
    assert {"setup", "doctor", "types", "define", "attach", "start", "stop", "status"} <= shown
    assert ["attach", "win10", "win10", "--display", "gtk-gl"] in lines
    assert any("--min-resolution" in argv for argv in lines)
    readme, _ = commands(ROOT / "README.md")
    assert ["stop", "win10", "--force"] in readme and ["stop", "win10"] in readme


def test_the_check_catches_a_drifted_command() -> None:
    assert _parses(["attach", "win10", "win10", "--display", "sdl"]) is not None
    assert _parses(["define", "win10"]) is not None  # --type or --min-resolution is required
    assert _parses(["start", "win10"]) is None
    assert _mentions_real_options(["stop", "--forse"]) is not None
    assert _mentions_real_options(["tun"]) is not None
    assert _mentions_real_options(["stop"]) is None
    text = "Run:\n\n    sudo gvt-client attach win10 win10 \\\n        --dry-run   # a diff\n"
    assert _code_lines(text) == ["sudo gvt-client attach win10 win10 --dry-run   # a diff"]

"""Shell completion for gvt-client (bash, zsh, fish), generated from its argument parser.

Commands, options and choices are static, taken from `gvtd.client.main.build_parser`, so a
new option completes as soon as it exists. Domain and vGPU names come from the running
daemon (`gvt-client list --json`, with --session when the command line has it) under a
two-second timeout; when gvtd does not answer, those positions complete to nothing.

    python3 -m gvtd.completion OUTDIR    # writes gvt-client.bash, _gvt-client, gvt-client.fish
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gvtd.manpages import subcommands, write_files

PROG = "gvt-client"
# Reads the JSON of `gvt-client list --json` on stdin, prints one vGPU name or domain name
# (argv[1]: "name" or "domain") per line.
NAMES_PY = ("import json,sys\n"
            "k=sys.argv[1]\n"
            "print('\\n'.join(sorted({v[k] for v in json.load(sys.stdin) if v.get(k)})))")


@dataclass
class Option:
    flags: list[str]
    help: str
    takes_value: bool
    choices: list[str]
    names: str | None  # "domain" or "name" (a vGPU): complete from the daemon
    files: bool = False  # a path (metavar FILE): complete file names


@dataclass
class Command:
    name: str
    help: str
    options: list[Option] = field(default_factory=list)
    positionals: list[str | None] = field(default_factory=list)  # "domain", "name" or None


def _names_kind(command: str, dest: str) -> str | None:
    """Which daemon names an argument takes: domains, vGPUs, or nothing to offer."""
    if dest == "domain":
        return "domain"
    if dest == "vgpu" or (dest == "name" and command != "define"):
        return "name"  # define's NAME is a new name
    return None


def _option(action: argparse.Action, command: str) -> Option:
    return Option(list(action.option_strings), " ".join((action.help or "").split()),
                  action.nargs != 0, [str(c) for c in action.choices or []],
                  _names_kind(command, action.dest) if action.nargs != 0 else None,
                  action.metavar == "FILE")


def model() -> tuple[list[Option], list[Command]]:
    """(global options, commands) of gvt-client's parser."""
    from gvtd.client.main import build_parser

    p = build_parser()
    glob = [_option(a, "") for a in p._actions
            if a.option_strings and a.help != argparse.SUPPRESS]
    shared = {f for o in glob for f in o.flags}
    commands = []
    for name, help_, sub in subcommands(p):
        c = Command(name, " ".join(help_.split()))
        for a in sub._actions:
            if a.option_strings:
                if not set(a.option_strings) & shared and a.help != argparse.SUPPRESS:
                    c.options.append(_option(a, name))
            else:
                c.positionals.append(_names_kind(name, a.dest))
        commands.append(c)
    return glob, commands


def _value_options(glob: list[Option], commands: list[Command]) -> list[str]:
    return sorted({f for o in glob + [o for c in commands for o in c.options]
                   if o.takes_value for f in o.flags})


def _sq(text: str) -> str:
    """A single-quoted shell word."""
    return "'" + text.replace("'", "'\\''") + "'"


def bash() -> str:
    glob, commands = model()
    gflags = " ".join(f for o in glob for f in o.flags)
    lines = [
        f"# bash completion for {PROG}; generated from its argument parser (gvtd.completion).",
        "",
        "_gvt_client_names() {",
        "    # $1: name or domain; $2: --session or nothing. Nothing when gvtd does not answer.",
        f"    timeout 2 {PROG} $2 list --json 2>/dev/null | python3 -c {_sq(NAMES_PY)} \"$1\" "
        "2>/dev/null",
        "}",
        "",
        "_gvt_client() {",
        "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}",
        "    local cmd='' bus='' npos=0 i w skip=0",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        "        w=${COMP_WORDS[i]}",
        "        if ((skip)); then skip=0; continue; fi",
        "        case $w in",
        "            --session) bus=$w ;;",
        f"            {'|'.join(_value_options(glob, commands))}) skip=1 ;;",
        "            -*) ;;",
        "            *) if [[ -z $cmd ]]; then cmd=$w; else ((npos++)); fi ;;",
        "        esac",
        "    done",
        "    local opts='' kind=''",
        "    case $cmd in",
    ]
    for c in commands:
        cflags = " ".join(f for o in c.options for f in o.flags)
        lines.append(f"        {c.name}) opts={_sq(cflags)} ;;")
    lines += ["    esac", "    case $cmd:$prev in"]
    for c in [Command("", "", glob)] + commands:
        for o in c.options:
            if not o.takes_value:
                continue
            pattern = "|".join(f"{c.name or '*'}:{f}" for f in o.flags)
            if o.choices:
                action = f"COMPREPLY=($(compgen -W {_sq(' '.join(o.choices))} -- \"$cur\"))"
            elif o.names:
                action = (f"COMPREPLY=($(compgen -W \"$(_gvt_client_names {o.names} $bus)\" "
                          "-- \"$cur\"))")
            elif o.files:
                action = ("compopt -o filenames 2>/dev/null; "
                          "COMPREPLY=($(compgen -f -- \"$cur\"))")
            else:
                action = "COMPREPLY=()"
            lines.append(f"        {pattern}) {action}; return ;;")
    lines += [
        "    esac",
        "    if [[ $cur == -* ]]; then",
        f"        COMPREPLY=($(compgen -W \"{gflags} $opts\" -- \"$cur\"))",
        "        return",
        "    fi",
        "    if [[ -z $cmd ]]; then",
        f"        COMPREPLY=($(compgen -W {_sq(' '.join(c.name for c in commands))} "
        "-- \"$cur\"))",
        "        return",
        "    fi",
        "    case $cmd:$npos in",
    ]
    for c in commands:
        for i, kind in enumerate(c.positionals):
            if kind:
                lines.append(f"        {c.name}:{i}) kind={kind} ;;")
    lines += [
        "    esac",
        "    [[ -n $kind ]] && COMPREPLY=($(compgen -W \"$(_gvt_client_names $kind $bus)\" "
        "-- \"$cur\"))",
        "    return 0",
        "}",
        "",
        f"complete -F _gvt_client {PROG}",
    ]
    return "\n".join(lines) + "\n"


def _zq(text: str) -> str:
    """Help text inside a zsh _arguments spec: no brackets or colons unescaped."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:")


def _zsh_spec(o: Option, exclusive: list[str]) -> list[str]:
    excl = f"({' '.join(exclusive)})" if exclusive else ""
    if not o.takes_value:
        action = ""
    elif o.choices:
        action = f":{o.flags[-1].lstrip('-')}:({' '.join(o.choices)})"
    elif o.names:
        action = f":{o.names}:_gvt_client_{o.names}s"
    elif o.files:
        action = f":{o.flags[-1].lstrip('-')}:_files"
    else:
        action = f":{o.flags[-1].lstrip('-')}: "
    return [_sq(f"{excl}{f}[{_zq(o.help)}]{action}") for f in o.flags]


def zsh() -> str:
    glob, commands = model()
    gspecs = []
    for o in glob:
        others = [f for f in ("--system", "--session") if f not in o.flags]
        gspecs += _zsh_spec(o, others if set(o.flags) & {"--system", "--session"} else [])
    lines = [
        f"#compdef {PROG}",
        f"# zsh completion for {PROG}; generated from its argument parser (gvtd.completion).",
        "",
        "_gvt_client_fetch() {",
        "    local -a found",
        f"    found=(${{(f)\"$(timeout 2 {PROG} ${{words[(r)--session]}} list --json "
        f"2>/dev/null | python3 -c {_sq(NAMES_PY)} $1 2>/dev/null)\"}})",
        "    (( ${#found} )) && compadd -a found",
        "}",
        "_gvt_client_domains() { _gvt_client_fetch domain }",
        "_gvt_client_names() { _gvt_client_fetch name }",
        "",
        "_gvt_client() {",
        "    local curcontext=$curcontext state line",
        "    typeset -A opt_args",
        "    _arguments -C \\",
        *[f"        {s} \\" for s in gspecs],
        "        '1:command:->command' \\",
        "        '*::argument:->argument'",
        "    case $state in",
        "        command)",
        "            local -a commands",
        "            commands=(",
        *[f"                {_sq(c.name + ':' + c.help.replace(':', chr(92) + ':'))}"
          for c in commands],
        "            )",
        "            _describe command commands",
        "            ;;",
        "        argument)",
        "            case $words[1] in",
    ]
    for c in commands:
        specs = []
        for o in c.options:
            specs += _zsh_spec(o, [])
        for i, kind in enumerate(c.positionals):
            specs.append(_sq(f"{i + 1}:{kind or 'argument'}:"
                             + (f"_gvt_client_{kind}s" if kind else " ")))
        body = " ".join(["_arguments", *gspecs, *specs])
        lines.append(f"                {c.name}) {body} ;;")
    lines += [
        "            esac",
        "            ;;",
        "    esac",
        "}",
        "",
        '_gvt_client "$@"',
    ]
    return "\n".join(lines) + "\n"


def _fq(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish() -> str:
    glob, commands = model()
    values = " ".join(_value_options(glob, commands))
    lines = [
        f"# fish completion for {PROG}; generated from its argument parser (gvtd.completion).",
        "",
        "function __gvt_client_names --argument-names kind",
        "    set -l bus",
        "    contains -- --session (commandline -opc); and set bus --session",
        f"    timeout 2 {PROG} $bus list --json 2>/dev/null | python3 -c {_fq(NAMES_PY)} $kind "
        "2>/dev/null",
        "end",
        "",
        "# true when the command line so far is COMMAND followed by N arguments",
        "function __gvt_client_at --argument-names cmd n",
        "    set -l words (commandline -opc)",
        "    set -e words[1]",
        "    set -l found ''",
        "    set -l seen 0",
        "    set -l skip 0",
        "    for w in $words",
        "        if test $skip = 1",
        "            set skip 0",
        "            continue",
        "        end",
        f"        if contains -- $w {values}",
        "            set skip 1",
        "        else if string match -q -- '-*' $w",
        "            continue",
        "        else if test -z \"$found\"",
        "            set found $w",
        "        else",
        "            set seen (math $seen + 1)",
        "        end",
        "    end",
        "    test \"$found\" = \"$cmd\" -a $seen = $n",
        "end",
        "",
        f"complete -c {PROG} -f",
    ]

    def opt(o: Option, cond: str) -> str:
        parts = [f"complete -c {PROG}"]
        if cond:
            parts.append(f"-n {_fq(cond)}")
        for f in o.flags:
            parts.append(f"-l {f[2:]}" if f.startswith("--") else f"-s {f[1:]}")
        if o.takes_value:
            parts.append("-r -F" if o.files else "-x")  # -x: no file names
            if o.choices:
                parts.append(f"-a {_fq(' '.join(o.choices))}")
            elif o.names:
                parts.append(f"-a {_fq('(__gvt_client_names ' + o.names + ')')}")
        parts.append(f"-d {_fq(o.help)}")
        return " ".join(parts)

    lines += [opt(o, "") for o in glob]
    names = " ".join(c.name for c in commands)
    for c in commands:
        lines.append(f"complete -c {PROG} -n {_fq('not __fish_seen_subcommand_from ' + names)} "
                     f"-a {c.name} -d {_fq(c.help)}")
        lines += [opt(o, f"__fish_seen_subcommand_from {c.name}") for o in c.options]
        for i, kind in enumerate(c.positionals):
            if kind:
                lines.append(f"complete -c {PROG} -n {_fq(f'__gvt_client_at {c.name} {i}')} "
                             f"-a {_fq('(__gvt_client_names ' + kind + ')')}")
    return "\n".join(lines) + "\n"


FILES = {"gvt-client.bash": bash, "_gvt-client": zsh, "gvt-client.fish": fish}


def write_all(outdir: Path) -> list[Path]:
    return write_files(outdir, FILES)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m gvtd.completion",
                                 description="Write gvt-client's shell completions.")
    ap.add_argument("outdir", type=Path)
    for path in write_all(ap.parse_args(argv).outdir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

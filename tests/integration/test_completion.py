"""Shell completion: commands and options from the parser, names from the running daemon."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gvtd import completion
from gvtd.client.main import build_parser
from gvtd.manpages import subcommands
from harness import DBusDaemon, Simulation

BIN = str(Path(sys.executable).parent)  # where gvt-client is installed


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("completion")
    completion.write_all(out)
    return out


def _env(address: str) -> dict[str, str]:
    return dict(os.environ, DBUS_SESSION_BUS_ADDRESS=address,
                PATH=f"{BIN}:{os.environ['PATH']}")


def bash_complete(scripts: Path, words: list[str], env: dict[str, str] | None = None) -> list[str]:
    """What bash offers for the last word of `words`, as programmable completion runs."""
    script = (f"source {scripts / 'gvt-client.bash'}\n"
              f"COMP_WORDS=({' '.join(repr(w) for w in words)}); "
              f"COMP_CWORD={len(words) - 1}\n_gvt_client\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"")
    p = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True,
                       env=env, timeout=30, check=True)
    assert p.stderr == ""
    return [w for w in p.stdout.splitlines() if w]


def fish_complete(scripts: Path, line: str, env: dict[str, str] | None = None) -> list[str]:
    p = subprocess.run(["fish", "--no-config", "-c",
                        f"source {scripts / 'gvt-client.fish'}; complete -C {line!r}"],
                       capture_output=True, text=True, env=env, timeout=30, check=True)
    assert p.stderr == ""
    return [w.split("\t")[0] for w in p.stdout.splitlines()]


def test_scripts_are_valid_shell(scripts: Path) -> None:
    subprocess.run(["bash", "-n", scripts / "gvt-client.bash"], check=True)
    subprocess.run(["zsh", "-n", scripts / "_gvt-client"], check=True)
    subprocess.run(["fish", "--no-config", "-n", scripts / "gvt-client.fish"], check=True)


def test_every_command_and_option_completes(scripts: Path) -> None:
    p = build_parser()
    commands = [name for name, _, _ in subcommands(p)]
    assert set(bash_complete(scripts, ["gvt-client", ""])) == set(commands)
    assert set(fish_complete(scripts, "gvt-client ")) >= set(commands)
    zsh_text = (scripts / "_gvt-client").read_text()
    for name, _, sub in subcommands(p):
        flags = {f for a in sub._actions for f in a.option_strings if f.startswith("--")}
        assert set(bash_complete(scripts, ["gvt-client", name, "--"])) >= flags, name
        assert set(fish_complete(scripts, f"gvt-client {name} --")) >= flags, name
        assert all(f"{f}[" in zsh_text for f in flags), name
        assert f"{name}) _arguments" in zsh_text


def test_choices_complete(scripts: Path) -> None:
    assert bash_complete(scripts, ["gvt-client", "attach", "--display", ""]) == \
        ["spice-gl", "gtk-gl", "vnc", "none"]
    assert set(fish_complete(scripts, "gvt-client define x --start ")) == \
        {"auto", "on-demand", "manual"}


def test_a_file_option_completes_file_names(scripts: Path) -> None:
    """attach --rom FILE: paths, in bash, fish and zsh."""
    licenses = "/usr/share/common-licenses/GPL-"
    assert "/usr/share/common-licenses/GPL-3" in bash_complete(
        scripts, ["gvt-client", "attach", "w", "g", "--rom", licenses])
    assert "/usr/share/common-licenses/GPL-3" in fish_complete(
        scripts, f"gvt-client attach w g --rom {licenses}")
    attach = next(x for x in (scripts / "_gvt-client").read_text().splitlines()
                  if x.strip().startswith("attach) "))
    assert "--rom[" in attach and ":rom:_files'" in attach


def test_names_come_from_the_running_daemon(scripts: Path, sim: Simulation) -> None:
    sim.gvt_client("define", "win10-gpu", "--min-resolution", "1920x1200", "--domain", "win10",
                   check=True)
    sim.gvt_client("define", "spare", "--type", "i915-GVTg_V5_8", "--start", "manual",
                   check=True)
    env = _env(sim.bus.address)
    assert bash_complete(scripts, ["gvt-client", "--session", "start", ""], env) == ["win10"]
    assert bash_complete(scripts, ["gvt-client", "--session", "attach", "win10", ""], env) == \
        ["spare", "win10-gpu"]
    assert bash_complete(scripts, ["gvt-client", "--session", "create", "s"], env) == ["spare"]
    assert bash_complete(scripts, ["gvt-client", "--session", "define", "x", "--domain", ""],
                         env) == ["win10"]
    assert bash_complete(scripts, ["gvt-client", "--session", "define", ""], env) == []
    assert fish_complete(scripts, "gvt-client --session stop ", env) == ["win10"]
    assert fish_complete(scripts, "gvt-client --session attach win10 ", env) == \
        ["spare", "win10-gpu"]


def test_no_daemon_completes_to_nothing_silently(scripts: Path, dbus: DBusDaemon) -> None:
    env = _env(dbus.address)  # a bus without gvtd on it
    assert bash_complete(scripts, ["gvt-client", "--session", "start", ""], env) == []
    assert fish_complete(scripts, "gvt-client --session remove ", env) == []

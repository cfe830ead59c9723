"""Where gvtd keeps its files: flags, then systemd's environment, then the defaults; with
--simulate the environment counts the same and the simulation fills in the rest."""

from pathlib import Path

import pytest

from gvtd.daemon import parse_args

ENV = {"GVTD_CONFIG_DIR": "/env/etc", "STATE_DIRECTORY": "/env/state:/env/other",
       "RUNTIME_DIRECTORY": "/env/run"}


def dirs(argv: list[str]) -> tuple[Path | None, Path | None, Path | None]:
    a = parse_args(argv)
    return a.config_dir, a.state_dir, a.runtime_dir


@pytest.mark.parametrize("simulate", [[], ["--simulate"]])
def test_environment_names_the_directories(monkeypatch: pytest.MonkeyPatch,
                                           simulate: list[str]) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    assert dirs(simulate) == (Path("/env/etc"), Path("/env/state"), Path("/env/run"))


@pytest.mark.parametrize("simulate", [[], ["--simulate"]])
def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch,
                                        simulate: list[str]) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    assert dirs([*simulate, "--config-dir", "/f/etc", "--state-dir", "/f/state",
                 "--runtime-dir", "/f/run"]) == (Path("/f/etc"), Path("/f/state"), Path("/f/run"))


def test_defaults_without_either(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("STATE_DIRECTORY", "")  # set but empty: as if unset
    assert dirs([]) == (Path("/etc/gvtd"), Path("/var/lib/gvtd"), Path("/run/gvtd"))
    assert dirs(["--simulate"]) == (None, None, None)  # the simulation picks its own

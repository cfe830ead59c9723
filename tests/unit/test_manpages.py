"""The generated man pages and gvtd.toml name every option and setting the code has."""

import argparse
import subprocess
import tomllib

from gvtd import manpages
from gvtd.client.main import build_parser as client_parser
from gvtd.config import Definition, Settings
from gvtd.daemon import build_parser as daemon_parser


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    out = {f for a in parser._actions for f in a.option_strings}
    for _, _, sub in manpages.subcommands(parser):
        out |= _flags(sub)
    return out


def _roff_text(page: str) -> str:
    """What a reader sees, near enough: hyphens unescaped, fonts dropped."""
    return (page.replace("\\-", "-").replace("\\fB", "").replace("\\fI", "")
            .replace("\\fR", "").replace("\\e", "\\"))


def test_gvtd_page_has_every_option() -> None:
    text = _roff_text(manpages.gvtd_page())
    missing = [f for f in _flags(daemon_parser()) if f not in text]
    assert not missing


def test_client_page_has_every_command_and_option() -> None:
    text = _roff_text(manpages.gvt_client_page())
    p = client_parser()
    missing = [f for f in _flags(p) if f not in text]
    missing += [name for name, _, _ in manpages.subcommands(p) if f"gvt-client {name}" not in text]
    assert not missing
    assert len(manpages.subcommands(p)) >= 15


def test_toml_page_has_every_setting_and_field_with_description() -> None:
    text = _roff_text(manpages.gvtd_toml_page())
    for model in (Settings, Definition):
        for name, field in model.model_fields.items():
            assert name in text
            assert field.description and " ".join(field.description.split()) in " ".join(
                text.split()), name


def test_settings_file_comments_every_setting_at_its_default() -> None:
    text = manpages.settings_file()
    assert tomllib.loads(text) == {}  # all commented: the daemon's defaults apply
    uncommented = "\n".join(line[1:] if line.startswith("#") and "=" in line else line
                            for line in text.splitlines())
    values = tomllib.loads(uncommented)
    assert set(values) == set(Settings.model_fields)
    assert Settings.model_validate(values) == Settings()


def test_pages_render_without_warnings(tmp_path) -> None:
    for path in manpages.write_all(tmp_path):
        if path.suffix in (".1", ".5", ".8"):
            p = subprocess.run(["man", "--warnings", "-l", "-Tutf8", "-Z", str(path)],
                               capture_output=True, text=True, env={"MANWIDTH": "80",
                                                                    "PATH": "/usr/bin:/bin"})
            assert p.returncode == 0 and p.stderr == "", (path.name, p.stderr)

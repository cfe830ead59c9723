"""The Debian package: built with dpkg-buildpackage in a clean root, lintian-clean, and
installed by apt into a fresh Debian root where its programs run."""

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gvtd import __version__

TOP = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(TOP / "packaging"))
import debroot  # noqa: E402

EXPECTED = [
    "/usr/bin/gvtd", "/usr/bin/gvt-client",
    "/usr/lib/python3/dist-packages/gvtd/daemon.py",
    "/usr/lib/systemd/system/gvtd.service",
    "/usr/share/dbus-1/system.d/io.github.gvtd1.conf",
    "/usr/share/dbus-1/system-services/io.github.gvtd1.service",
    "/usr/share/dbus-1/interfaces/io.github.gvtd1.xml",
    "/usr/share/polkit-1/actions/io.github.gvtd1.policy",
    "/usr/share/polkit-1/rules.d/50-io.github.gvtd1.rules",
    "/etc/gvtd/gvtd.toml", "/etc/gvtd/vgpus.d",
    "/etc/libvirt/hooks/qemu.d/gvtd",
    "/usr/share/man/man8/gvtd.8.gz", "/usr/share/man/man1/gvt-client.1.gz",
    "/usr/share/man/man5/gvtd.toml.5.gz",
    "/usr/share/bash-completion/completions/gvt-client",
    "/usr/share/zsh/vendor-completions/_gvt-client",
    "/usr/share/fish/vendor_completions.d/gvt-client.fish",
]


@pytest.fixture(scope="module")
def built() -> Path:
    out = debroot.package()  # shared with tests/e2e: built once per source content
    assert [p.name for p in out.glob("*.deb")] == [f"gvtd_{__version__}-1_all.deb"]
    return out


@pytest.fixture(scope="module")
def installed(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("root")
    yield debroot.install(next(built.glob("*.deb")), work)
    shutil.rmtree(work)


def inside(root: Path, script: str) -> str:
    p = debroot.run_in(root, script, check=False, capture=True)
    assert p.returncode == 0, f"{script}: {p.stderr}"
    return p.stdout


@pytest.mark.timeout(900)
def test_lintian_has_no_errors_or_unexplained_warnings(built: Path) -> None:
    changes = next(built.glob("*.changes"))
    p = subprocess.run(["lintian", "--fail-on", "error,warning", str(changes)],
                       capture_output=True, text=True)
    tags = [line for line in p.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert p.returncode == 0 and not tags, p.stdout + p.stderr


@pytest.mark.timeout(900)
def test_installs_into_fresh_root_and_runs(installed: Path) -> None:
    files = set(inside(installed, "dpkg-query -L gvtd").split())
    assert not [f for f in EXPECTED if f not in files]
    assert inside(installed, "gvtd --version").strip() == f"gvtd {__version__}"
    assert "gvt-client" in inside(installed, "gvt-client --help")
    assert inside(installed, "dpkg-query -W -f='${Conffiles}' gvtd").split()[0] == \
        "/etc/gvtd/gvtd.toml"
    # enabled by the maintainer scripts (deb-systemd-helper) without a running systemd
    assert (installed / "etc/systemd/system/multi-user.target.wants/gvtd.service").is_symlink()
    # the shipped gvtd.toml is every setting, commented: the daemon reads it as defaults
    assert inside(installed, "python3 -c 'import gvtd.config as c, pathlib; "
                             "print(c.ConfigDir(pathlib.Path(\"/etc/gvtd\")).load_settings())'") \
        .startswith("(Settings(libvirt_uri='qemu:///system'")
    # no GVT-g, no systemd, no bus in this root: removing and purging must not fail either
    inside(installed, "apt-get purge -y -qq gvtd >/dev/null 2>&1 && ! test -e /usr/bin/gvtd")

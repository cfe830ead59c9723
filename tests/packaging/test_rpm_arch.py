"""The RPM and the Arch package, built for real: rpmbuild and makepkg in a clean trixie root
(packaging/debroot.py), each package's listing equal to what its definition names
(packaging/filelists.py), and rpmlint with nothing but the explained filters."""

import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gvtd import __version__

TOP = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(TOP / "packaging"))
import debroot  # noqa: E402
import filelists  # noqa: E402


def without_modules(paths: set[str]) -> set[str]:
    """A listing's files and empty directories, less the Python tree, the docs and the
    license text (%doc and %license in the spec)."""
    out = {p.rstrip("/") for p in paths}
    leaves = {p for p in out if not any(q.startswith(p + "/") for q in out)}
    return {p for p in leaves if not any(s in p for s in ("-packages/", "/doc/", "/licenses/"))}


@pytest.fixture(scope="module")
def rpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("rpm")
    made = debroot.build_rpm(work / "out", work / "build")
    shutil.rmtree(work / "build")
    yield made


@pytest.fixture(scope="module")
def arch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("arch")
    made = debroot.build_arch(work / "out", work / "build")
    shutil.rmtree(work / "build")
    yield made


def rpm_query(rpm: Path, *what: str) -> list[str]:
    return subprocess.run(["rpm", "-qp", *what, str(rpm)], check=True, capture_output=True,
                          text=True).stdout.split()


@pytest.mark.timeout(900)
def test_rpm_ships_what_the_spec_names(rpm: Path) -> None:
    assert rpm.name == f"gvtd-{__version__}-1.noarch.rpm"
    listed = set(rpm_query(rpm, "-l"))
    assert filelists.normal(without_modules(listed)) == filelists.rpm()
    assert any(p.endswith("-packages/gvtd/daemon.py") for p in listed)
    assert any("/licenses/gvtd" in p and p.endswith("/COPYING") for p in listed)
    assert rpm_query(rpm, "-c") == ["/etc/gvtd/gvtd.toml"]
    assert {"python3-pydantic", "python3-dbus-fast", "polkit"} <= set(rpm_query(rpm, "-R"))


@pytest.mark.timeout(900)
def test_rpmlint_has_nothing_unexplained(rpm: Path) -> None:
    p = subprocess.run(["rpmlint", "-r", str(TOP / "packaging/rpm/gvtd.rpmlintrc"), str(rpm),
                        str(TOP / "packaging/rpm/gvtd.spec")], capture_output=True, text=True)
    found = [line for line in p.stdout.splitlines() if ": E: " in line or ": W: " in line]
    assert p.returncode == 0 and not found, p.stdout + p.stderr


@pytest.mark.timeout(900)
def test_arch_package_ships_what_the_pkgbuild_names(arch: Path) -> None:
    assert arch.name == f"gvtd-{__version__}-1-any.pkg.tar.gz"
    with tarfile.open(arch) as tar:
        names = tar.getnames()
        info = tar.extractfile(".PKGINFO").read().decode()  # type: ignore[union-attr]
    listed = {"/" + n for n in names if not n.startswith(".")}
    assert filelists.normal(without_modules(listed)) == filelists.arch()
    assert any(p.endswith("-packages/gvtd/daemon.py") for p in listed)
    assert "backup = etc/gvtd/gvtd.toml" in info and "depend = python-pydantic" in info
    assert ".INSTALL" in names

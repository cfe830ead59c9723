"""The files each package definition installs, read from the definitions themselves:
packaging/debian (rules and gvtd.manpages), packaging/rpm/gvtd.spec (%files, expanded by
rpmspec) and packaging/arch/PKGBUILD (package()'s install lines).

Paths are as installed, without the Python modules (each distribution has its own
site-packages) and with each distribution's own directory for a kind of file mapped to
Debian's (DISTRO_PATHS), so that the three sets are equal exactly when the packages ship
the same files. tests/packaging/test_file_lists.py compares them.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent

# Where RPM distributions and Arch put a file Debian puts elsewhere: theirs -> Debian's.
DISTRO_PATHS = {"/usr/share/zsh/site-functions/": "/usr/share/zsh/vendor-completions/"}


def _normal(path: str) -> str:
    path = path.rstrip("/")
    for theirs, ours in DISTRO_PATHS.items():
        if path.startswith(theirs):
            return ours + path[len(theirs):]
    return path


def scripts() -> set[str]:
    """/usr/bin entry points, which each build makes from pyproject's [project.scripts]."""
    data = tomllib.loads((TOP / "pyproject.toml").read_text())
    return {f"/usr/bin/{name}" for name in data["project"]["scripts"]}


def deb() -> set[str]:
    """execute_after_dh_auto_install's destinations, the man pages, the entry points."""
    rules = (TOP / "packaging/debian/rules").read_text()
    out = {_normal(m) for m in re.findall(r"\$\(PKG\)(/\S+)", rules)}
    for line in (TOP / "packaging/debian/gvtd.manpages").read_text().split():
        name = Path(line).name
        out.add(f"/usr/share/man/man{name.rsplit('.', 1)[1]}/{name}")
    return out | scripts()


def rpm(spec: Path = TOP / "packaging/rpm/gvtd.spec") -> set[str]:
    """%files of the spec as rpmspec expands it, without the Python tree, %doc and the
    directories it only co-owns."""
    text = subprocess.run(["rpmspec", "-P", str(spec)], check=True, capture_output=True,
                          text=True).stdout
    files = text.split("\n%files\n", 1)[1].split("\n%changelog", 1)[0]
    out = set()
    for line in files.splitlines():
        line = re.sub(r"^(%config(\(\w+\))?|%dir)\s+", "", line.strip())
        if not line.startswith("/") or "-packages/" in line:
            continue  # %doc, %license, comments; the modules
        if line.endswith("/qemu.d"):
            continue  # libvirt's hooks directory, owned with it
        if line == "/etc/gvtd":
            continue  # the parent of gvtd.toml; Debian's list names only its content
        out.add(_normal(line.removesuffix("*")))
    return out


def arch(pkgbuild: Path = TOP / "packaging/arch/PKGBUILD") -> set[str]:
    """The destinations of package()'s install lines, and the entry points."""
    body = pkgbuild.read_text().split("package() {", 1)[1].split("\n}", 1)[0]
    return {_normal(m) for m in re.findall(r'"\$pkgdir(/[^"]+)"', body)} | scripts()


def version_of(path: Path, pattern: str) -> str:
    m = re.search(pattern, path.read_text(), re.M)
    assert m, f"no version in {path}"
    return m.group(1)


def normal(paths: set[str]) -> set[str]:
    """A built package's listing in the same terms: man pages without their compression."""
    return {_normal(re.sub(r"(/man/man\d/[^/]+)\.gz$", r"\1", p)) for p in paths}

#!/usr/bin/python3
"""Build the .deb in a clean Debian root and install it into a fresh one; build the RPM and
the Arch package in one.

The package targets Debian 13 (trixie): gvtd needs pydantic 2, and Debian 12 ships only
python3-pydantic 1.10 (see packaging/README.md). So the build runs in a trixie root made by
mmdebstrap with the Build-Depends, whatever the host is, and the install check runs in a
second, minimal trixie root where apt resolves the package's Depends from Debian alone.

Roots are cached as tarballs under .cache/debroot/, named by a hash of what went into them
(suite, mirror, packages), so a second run skips the bootstrap. Needs root, mmdebstrap and
unshare (util-linux).

    packaging/debroot.py build OUTDIR    # OUTDIR/gvtd_*.deb and the .changes
    packaging/debroot.py install DEB     # a fresh root with it installed; prints its path
    packaging/debroot.py rpm OUTDIR      # OUTDIR/gvtd-*.noarch.rpm (rpmbuild)
    packaging/debroot.py arch OUTDIR     # OUTDIR/gvtd-*-any.pkg.tar.gz (makepkg)
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
CACHE = TOP / ".cache" / "debroot"
SUITE = "trixie"


@functools.cache
def host_mirror() -> str:
    """The Debian mirror this machine's apt uses (its sources, deb822 or one-line), so the
    roots come from wherever the host is allowed to fetch packages."""
    sources = Path("/etc/apt/sources.list.d")
    for f in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for m in re.finditer(r"^URIs:\s*(\S+)", f.read_text(), re.M):
            if m.group(1).rstrip("/").endswith("/debian"):
                return m.group(1)
    listed = Path("/etc/apt/sources.list")
    text = listed.read_text() if listed.exists() else ""
    for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
        if m.group(1).rstrip("/").endswith("/debian"):
            return m.group(1)
    raise SystemExit("No Debian mirror in /etc/apt/sources.list(.d): add one to build roots.")



def control_field(name: str) -> list[str]:
    """Package names of a relation field of packaging/debian/control (versions dropped; of
    alternatives the first; substitution variables skipped)."""
    text = (TOP / "packaging/debian/control").read_text()
    field = re.search(rf"^{name}:(.*?)^[A-Za-z-]+:", text, re.S | re.M)
    assert field, f"no {name} in control"
    names = []
    for line in field.group(1).splitlines():
        if line.startswith("#"):
            continue
        for item in line.split(","):
            name = re.sub(r"\(.*?\)", "", item.split("|")[0]).strip()
            if name and not name.startswith("${"):
                names.append(name)
    return names


def build_depends() -> list[str]:
    return control_field("Build-Depends")


def _tarball(variant: str, include: list[str]) -> Path:
    """A cached mmdebstrap root of SUITE with these packages, made once per content."""
    key = hashlib.sha256(json.dumps([SUITE, host_mirror(), variant, sorted(include)]).encode())
    path = CACHE / f"{SUITE}-{variant}-{key.hexdigest()[:16]}.tar"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tar.part")
        cmd = ["mmdebstrap", "--mode=root", "--format=tar", f"--variant={variant}", "--quiet"]
        if include:
            cmd.append("--include=" + ",".join(include))
        subprocess.run([*cmd, SUITE, str(tmp), host_mirror()], check=True)
        tmp.rename(path)
    return path


def extract(tarball: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-C", str(into), "-xf", str(tarball)], check=True)
    shutil.copy("/etc/resolv.conf", into / "etc/resolv.conf", follow_symlinks=True)
    return into


def run_in(root: Path, script: str, check: bool = True,
           capture: bool = False) -> subprocess.CompletedProcess[str]:
    """A shell script inside the root, with /proc and /dev in a private mount namespace so
    that nothing stays mounted whatever happens."""
    inner = (f'mount -t proc proc "{root}/proc" && mount --rbind /dev "{root}/dev" && '
             f'exec chroot "{root}" /bin/sh -ec "$0"')
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root",
           "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "--fork",
                           "sh", "-ec", inner, script], check=check, text=True, env=env,
                          capture_output=capture)


def source_files() -> list[str]:
    """What the source package holds: the tracked and new files, nothing ignored."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=TOP,
                         check=True, capture_output=True, text=True).stdout
    return [f for f in out.split("\0") if f and (TOP / f).is_file()]


def build(outdir: Path, work: Path) -> list[Path]:
    """dpkg-buildpackage -us -uc -b in a clean root; the .deb and .changes go to outdir."""
    root = extract(_tarball("minbase", ["build-essential", *build_depends()]), work / "root")
    src = root / "build/gvtd"
    for f in source_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(TOP / f, src / f)
    shutil.copytree(TOP / "packaging/debian", src / "debian")
    run_in(root, "cd /build/gvtd && dpkg-buildpackage -us -uc -b")
    outdir.mkdir(parents=True, exist_ok=True)
    made = []
    for f in sorted((root / "build").iterdir()):
        if f.is_file() and f.suffix in (".deb", ".changes", ".buildinfo"):
            made.append(Path(shutil.copy2(f, outdir / f.name)))
    return made


# The RPM and the Arch package are built in a trixie root too: Debian's rpm (rpmbuild) and
# makepkg, with Debian's Python tools standing in for the distributions' own.
FOREIGN_TOOLS = ["rpm", "python3-build", "python3-installer", "python3-wheel", "makepkg",
                 "pacman-package-manager", "fakeroot", "libarchive-tools", "python-is-python3"]


def version() -> str:
    import tomllib

    return tomllib.loads((TOP / "pyproject.toml").read_text())["project"]["version"]


def source_tarball(dest: Path) -> Path:
    """gvtd-VERSION.tar.gz with the top directory a release archive has."""
    import tarfile

    top = f"gvtd-{version()}"
    path = dest / f"{top}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for f in source_files():
            tar.add(TOP / f, arcname=f"{top}/{f}")
    return path


def foreign_root(work: Path) -> Path:
    return extract(_tarball("minbase", ["build-essential", *build_depends(), *FOREIGN_TOOLS]),
                   work)


def build_rpm(outdir: Path, work: Path) -> Path:
    """rpmbuild -bb of packaging/rpm/gvtd.spec. --nodeps: the BuildRequires are Fedora's
    names, installed here under Debian's; DEB_PYTHON_INSTALL_LAYOUT=deb makes Debian's
    python3 install into /usr as Fedora's does inside rpmbuild."""
    root = foreign_root(work / "root")
    (root / "build/rpm/SOURCES").mkdir(parents=True)
    source_tarball(root / "build/rpm/SOURCES")
    shutil.copy2(TOP / "packaging/rpm/gvtd.spec", root / "build/rpm/gvtd.spec")
    run_in(root, "cd /build/rpm && DEB_PYTHON_INSTALL_LAYOUT=deb rpmbuild -bb --nodeps "
                 "--define '_topdir /build/rpm' gvtd.spec")
    made = next((root / "build/rpm/RPMS/noarch").glob("gvtd-*.rpm"))
    outdir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(made, outdir / made.name))


def build_arch(outdir: Path, work: Path) -> Path:
    """makepkg of packaging/arch/PKGBUILD, as an unprivileged user (makepkg refuses root),
    with the release tarball already in place of the download; Debian's python3 installs
    into /usr (DEB_PYTHON_INSTALL_LAYOUT=deb) as Arch's does."""
    root = foreign_root(work / "root")
    build = root / "build/arch"
    build.mkdir(parents=True)
    for f in ("PKGBUILD", "gvtd.install"):
        shutil.copy2(TOP / "packaging/arch" / f, build / f)
    source_tarball(build)
    run_in(root, "mkdir -p /var/lib/pacman && chown -R nobody /build/arch && cd /build/arch && "
                 "runuser -u nobody -- env HOME=/build/arch PKGEXT=.pkg.tar.gz "
                 "DEB_PYTHON_INSTALL_LAYOUT=deb "
                 "makepkg --nodeps --noconfirm >/build/arch/makepkg.log 2>&1 "
                 "|| { cat /build/arch/makepkg.log >&2; exit 1; }")
    made = next(build.glob("gvtd-*.pkg.tar.gz"))
    outdir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(made, outdir / made.name))


def package() -> Path:
    """The .deb of the current sources, built once per content of the source files (the
    tests, which the package does not hold, left out): a directory under .cache/debroot/
    with the .deb, .changes and .buildinfo."""
    digest = hashlib.sha256()
    for f in sorted(f for f in source_files() if not f.startswith("tests/")):
        digest.update(f.encode() + b"\0" + (TOP / f).read_bytes() + b"\0")
    out = CACHE / f"deb-{digest.hexdigest()[:16]}"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="gvtd-deb-", dir=CACHE))
        try:
            build(work / "out", work / "build")
            (work / "out").rename(out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out


def install(deb: Path, work: Path) -> Path:
    """A fresh minimal root with the package installed by apt, Depends from Debian."""
    root = extract(_tarball("minbase", []), work / "installed")
    shutil.copy2(deb, root / "tmp" / deb.name)
    run_in(root, "apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                 f"/tmp/{deb.name} >/tmp/apt.log 2>&1 || {{ cat /tmp/apt.log >&2; exit 1; }}")
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the .deb into OUTDIR")
    b.add_argument("outdir", type=Path)
    i = sub.add_parser("install", help="install DEB into a fresh root and print its path")
    i.add_argument("deb", type=Path)
    for name in ("rpm", "arch"):
        sub.add_parser(name, help=f"build the {name} package into OUTDIR").add_argument(
            "outdir", type=Path)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("must run as root (mmdebstrap --mode=root and chroot)")
    work = Path(tempfile.mkdtemp(prefix="gvtd-deb-"))
    if args.command in ("build", "rpm", "arch"):
        try:
            if args.command == "build":
                for path in build(args.outdir, work):
                    print(path)
            else:
                print((build_rpm if args.command == "rpm" else build_arch)(args.outdir, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    else:
        print(install(args.deb.resolve(), work))
    return 0


if __name__ == "__main__":
    sys.exit(main())

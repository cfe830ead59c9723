"""The Debian, RPM and Arch package definitions name the same files (read from the
definitions: packaging/filelists.py), at the same version, so none of them drifts."""

import subprocess
import sys
from pathlib import Path

from gvtd import __version__

TOP = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(TOP / "packaging"))
import filelists  # noqa: E402

# Every kind of file the issue asks each package to ship.
KINDS = ["/usr/bin/gvtd", "/usr/bin/gvt-client", "/usr/lib/systemd/system/gvtd.service",
         "/usr/share/dbus-1/system.d/io.github.gvtd1.conf",
         "/usr/share/dbus-1/system-services/io.github.gvtd1.service",
         "/usr/share/polkit-1/actions/io.github.gvtd1.policy", "/etc/gvtd/gvtd.toml",
         "/usr/share/polkit-1/rules.d/50-io.github.gvtd1.rules",
         "/usr/share/man/man8/gvtd.8", "/usr/share/man/man1/gvt-client.1",
         "/usr/share/man/man5/gvtd.toml.5",
         "/usr/share/bash-completion/completions/gvt-client",
         "/usr/share/zsh/vendor-completions/_gvt-client",
         "/usr/share/fish/vendor_completions.d/gvt-client.fish",
         "/etc/libvirt/hooks/qemu.d/gvtd"]


def test_three_packages_name_the_same_files() -> None:
    deb = filelists.deb()
    assert not [k for k in KINDS if k not in deb]
    assert filelists.rpm() == deb, "the RPM spec differs from the Debian package"
    assert filelists.arch() == deb, "the PKGBUILD differs from the Debian package"


def test_a_file_missing_from_one_is_seen(tmp_path: Path) -> None:
    spec = (TOP / "packaging/rpm/gvtd.spec").read_text()
    (tmp_path / "gvtd.spec").write_text(
        spec.replace("%{fish_completions_dir}/gvt-client.fish\n", ""))
    assert filelists.deb() - filelists.rpm(tmp_path / "gvtd.spec") == \
        {"/usr/share/fish/vendor_completions.d/gvt-client.fish"}
    pkgbuild = (TOP / "packaging/arch/PKGBUILD").read_text()
    (tmp_path / "PKGBUILD").write_text(pkgbuild.replace("gvtd.toml.5\"", "gvtd.conf.5\""))
    assert filelists.deb() ^ filelists.arch(tmp_path / "PKGBUILD") == \
        {"/usr/share/man/man5/gvtd.toml.5", "/usr/share/man/man5/gvtd.conf.5"}


def test_same_version_everywhere() -> None:
    assert filelists.version_of(TOP / "packaging/rpm/gvtd.spec", r"^Version:\s*(\S+)") == \
        __version__
    assert filelists.version_of(TOP / "packaging/arch/PKGBUILD", r"^pkgver=(\S+)") == \
        __version__
    assert filelists.version_of(TOP / "packaging/debian/changelog", r"^gvtd \(([^-)]+)") == \
        __version__


def test_pkgbuild_and_install_script_are_valid_bash() -> None:
    for f in ("PKGBUILD", "gvtd.install"):
        p = subprocess.run(["bash", "-n", str(TOP / "packaging/arch" / f)],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr

"""The host's boot tooling, for `gvt-client setup`: which tool this host boots through, the
kernel command line its next boot gets, and the file changes and commands that add what
doctor asks for (gvtd/doctor.py owns the parameters, the modules and their right values).

Everything is read under a root directory (`/`, or another system's tree, as `systemctl
--root` takes it) and every command is one to run inside that root. Nothing here writes
a file or changes anything, so a dry run and the real one share every decision.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gvtd import doctor
from gvtd.hostconf import MODPROBE_DIRS
from gvtd.mdev import read_attr

HEADER = ("# Written by `gvt-client setup` for Intel GVT-g; `gvt-client setup --revert` "
          "removes it.\n")
# Sorts after the distribution's drop-ins, so that what it appends ends the line.
GRUB_DROPIN = "/etc/default/grub.d/zz-gvtd.cfg"
DEFAULT_GRUB = "/etc/default/grub"
MODULES_FILE = "/etc/modules-load.d/gvtd.conf"
KERNEL_CMDLINE = "/etc/kernel/cmdline"
SEARCH_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
MODULES_LOAD_DIRS = ("/etc/modules-load.d", "/run/modules-load.d",
                     "/usr/local/lib/modules-load.d", "/usr/lib/modules-load.d",
                     "/lib/modules-load.d")
ESP_CANDIDATES = ("/efi", "/boot", "/boot/efi")  # where kernel-install looks, in its order
NO_INITRAMFS = ("No initramfs change is needed: systemd-modules-load loads these modules from "
                "the root file system, and the kernel command line reaches every module "
                "wherever it loads (modprobe passes a module its parameters from it, in the "
                "initramfs too).")

Base = Callable[[str], "bytes | None"]  # a file's content as it was before setup changed it
Reader = Callable[[list[str]], str]  # runs a read-only command inside the root: its stdout


class BootError(Exception):
    """The boot configuration is one setup cannot change safely; the text says what to do."""


@dataclass(frozen=True)
class Root:
    """The system setup works on: its files, and its commands (chrooted unless it is /)."""

    path: Path = Path("/")

    def file(self, path: str) -> Path:
        return self.path / path.lstrip("/")

    def read(self, path: str) -> bytes | None:
        try:
            return self.file(path).read_bytes()
        except FileNotFoundError:
            return None
        except PermissionError as e:
            raise BootError(f"Cannot read {self.file(path)}: {e.strerror}; run it as root "
                            "(sudo).") from e
        except OSError as e:
            raise BootError(f"Cannot read {self.file(path)}: {e.strerror}.") from e

    def which(self, *programs: str) -> str | None:
        """The first of programs installed in the root, as its path there."""
        for name in programs:
            for d in SEARCH_PATH:
                if os.access(self.file(f"{d}/{name}"), os.X_OK):
                    return f"{d}/{name}"
        return None

    def command(self, argv: list[str]) -> list[str]:
        """argv as run from here: inside the root through chroot when it is not /."""
        return argv if self.path.resolve() == Path("/") else ["chroot", str(self.path), *argv]


@dataclass(frozen=True)
class Change:
    """One file: what is there now (None: absent) and what setup puts there (None: remove)."""

    path: str
    now: bytes | None
    then: bytes | None


@dataclass
class Plan:
    """What setup does on this host, decided before anything is written."""

    tool: str  # grub, systemd-boot, grubby or unknown
    how: str  # how this host boots, and how setup knows
    changes: list[Change] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)  # inside the root, in order
    revert_commands: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    next_cmdline: str | None = None  # what the next boot gets; None: cannot tell
    manual: str = ""  # unknown boot tooling: the step left to do by hand


# -- the kernel command line --------------------------------------------------------------

def as_text(data: bytes | None) -> str:
    """A file's bytes as text, undecodable bytes shown as U+FFFD (only for reading)."""
    return (data or b"").decode("utf-8", errors="replace")


def _overridden(additions: list[str], sources: list[tuple[str, str]]) -> list[str]:
    """What each appended parameter overrides, and where it is written."""
    keys = {k: f"{k}={v}" for k, v in doctor.cmdline_params(" ".join(additions)).items()}
    out = []
    for where, text in sources:
        for word in re.findall(r"[\w.-]+=[^\s\"']*", text):
            for key, value in doctor.cmdline_params(word).items():
                if key in keys and f"{key}={value}" != keys[key]:
                    out.append(f"{word} in {where}: the {keys[key]} after it wins (the kernel, "
                               "and modprobe for a module's parameters, take the last "
                               "occurrence); remove it from there to keep the line plain.")
    return out


def _check_result(line: str, where: str) -> None:
    """The line after the change must pass every doctor command-line check."""
    left = [c.id for c in doctor.check_cmdline(line) if c.severity != "pass"]
    if left:
        raise BootError(f"After the change the kernel command line would still fail "
                        f"{', '.join(left)} ({line.strip()!r}): something in {where} sets it "
                        "after setup's addition. Find it there, fix it, and run setup again. "
                        "Nothing was written.")


_GRUB_EVAL = 'for f do . "$f" || exit 1; done; printf "%s\\0%s\\0" ' \
    '"$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT"'


def grub_cmdline(files: list[bytes]) -> str:
    """The default entry's parameters as grub-mkconfig makes them: it sources
    /etc/default/grub and then each drop-in, in order, and writes GRUB_CMDLINE_LINUX then
    GRUB_CMDLINE_LINUX_DEFAULT after the kernel's root= and ro."""
    with tempfile.TemporaryDirectory(prefix="gvtd-grub.") as tmp:
        names = []
        for i, data in enumerate(files):
            (Path(tmp) / f"{i}.cfg").write_bytes(data)
            names.append(str(Path(tmp) / f"{i}.cfg"))
        p = subprocess.run(["sh", "-c", _GRUB_EVAL, "sh", *names], capture_output=True,
                           cwd=tmp, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, timeout=30)
    if p.returncode != 0:
        raise BootError("The GRUB configuration does not run as a shell script, as "
                        f"grub-mkconfig needs: {as_text(p.stderr).strip()}. Fix it first "
                        "(sudo update-grub shows the same error). Nothing was written.")
    linux, default = as_text(p.stdout).split("\0")[:2]
    return f"{linux} {default}".strip()


def _grub_plan(root: Root, base: Base) -> Plan:
    mkconfig = root.which("grub-mkconfig", "grub2-mkconfig")
    update = root.which("update-grub")
    assert mkconfig or update
    if update:
        regen = ["update-grub"]
    else:
        assert mkconfig
        cfg = "/boot/grub2/grub.cfg" if mkconfig.endswith("grub2-mkconfig") else \
            "/boot/grub/grub.cfg"
        regen = [Path(mkconfig).name, "-o", cfg]
    generator = Path(mkconfig or update or "").name
    dropins = "default/grub.d" in (as_text(root.read(mkconfig)) if mkconfig else "")
    target = GRUB_DROPIN if dropins else DEFAULT_GRUB
    names = [DEFAULT_GRUB] + (sorted({f"/etc/default/grub.d/{p.name}" for p in root.file(
        "/etc/default/grub.d").glob("*.cfg")} | {GRUB_DROPIN}) if dropins else [])
    sources = [(n, base(n) or b"") for n in names]
    line = grub_cmdline([data for _, data in sources])
    additions = doctor.cmdline_additions(line)
    block = (HEADER + "# Appended to the kernel command line that grub-mkconfig has read "
             "so far: a later\n# parameter wins over an earlier one.\n"
             f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT '
             f'{" ".join(additions)}"\n').encode()
    original = base(target)
    if not additions:
        then = original
    elif dropins:
        then = block
    else:
        grub = original or b""
        then = grub + (b"\n" if grub and not grub.endswith(b"\n") else b"") + block
    plan = Plan("grub", f"This host boots with GRUB: {DEFAULT_GRUB} and {regen[0]} are there"
                + (f"; {generator} reads /etc/default/grub.d/*.cfg after it, so setup adds "
                   "a file of its own there." if dropins else
                   f"; {generator} reads no /etc/default/grub.d, so setup appends its lines "
                   f"to {DEFAULT_GRUB}."),
                commands=[regen], revert_commands=[regen])
    now = root.read(target)
    if now != then:
        plan.changes.append(Change(target, now, then))
    plan.next_cmdline = grub_cmdline([then or b"" if n == target else data
                                      for n, data in sources])
    _check_result(plan.next_cmdline, f"{DEFAULT_GRUB} or /etc/default/grub.d")
    plan.notes += _overridden(additions, [(n, as_text(d)) for n, d in sources if n != target
                                          or not dropins])
    if not plan.changes:
        plan.commands = []
    return plan


def kernels(root: Root) -> list[list[str]]:
    """Each installed kernel as kernel-install's arguments: version, image[, initrd]."""
    out: dict[str, list[str]] = {}
    for image in sorted(root.file("/boot").glob("vmlinuz-*")):
        version = image.name[len("vmlinuz-"):]
        initrds = [p for p in (f"/boot/initrd.img-{version}", f"/boot/initramfs-{version}.img")
                   if root.file(p).exists()]
        out[version] = [version, f"/boot/{image.name}", *initrds[:1]]
    for image in sorted(root.file("/usr/lib/modules").glob("*/vmlinuz")):
        version = image.parent.name
        out.setdefault(version, [version, f"/usr/lib/modules/{version}/vmlinuz"])
    return list(out.values())


def proc_cmdline(procfs: Path) -> str | None:
    """The running kernel's command line, read as doctor reads it."""
    text = read_attr(procfs / "cmdline")
    return text.strip() if text is not None else None


def _systemd_boot_plan(root: Root, base: Base, procfs: Path) -> Plan:
    original = base(KERNEL_CMDLINE)
    if original is not None:
        line = " ".join(as_text(original).split())
    elif (usr := root.read("/usr/lib/kernel/cmdline")) is not None:
        line = " ".join(as_text(usr).split())
    else:
        current = proc_cmdline(procfs)
        if current is None:
            raise BootError(f"There is no {KERNEL_CMDLINE}, and the running kernel's command "
                            f"line ({procfs / 'cmdline'}) cannot be read to start one from. "
                            f"Write the whole command line you boot with into "
                            f"{root.file(KERNEL_CMDLINE)} and run setup again.")
        # what kernel-install itself falls back to
        line = " ".join(w for w in current.split()
                        if not w.startswith(("BOOT_IMAGE=", "initrd=")))
    additions = doctor.cmdline_additions(line)
    regen = [["kernel-install", "add", *k] for k in kernels(root)]
    plan = Plan("systemd-boot", "This host boots with systemd-boot (boot loader entries "
                "written by kernel-install): setup adds to the kernel command line in "
                f"{KERNEL_CMDLINE}, from which kernel-install writes each kernel's entry.",
                commands=regen, revert_commands=regen)
    if not regen:
        plan.notes.append("No installed kernel found under /boot or /usr/lib/modules: the "
                          f"next kernel installed gets the line from {KERNEL_CMDLINE}.")
    if original is not None:
        then = (original.rstrip(b"\n") + (b" " if original.strip() else b"")
                + " ".join(additions).encode() + b"\n") if additions else original
    else:
        then = f"{line} {' '.join(additions)}\n".lstrip().encode() if additions else None
    now = root.read(KERNEL_CMDLINE)
    if now != then:
        plan.changes.append(Change(KERNEL_CMDLINE, now, then))
    plan.next_cmdline = " ".join(as_text(then).split()) if then is not None else line
    _check_result(plan.next_cmdline, KERNEL_CMDLINE)
    plan.notes += _overridden(additions, [(KERNEL_CMDLINE, line)])  # where the line goes
    if not plan.changes:
        plan.commands = []
    return plan


def _grubby_plan(root: Root, read: Reader) -> Plan:
    info = read(["grubby", "--info=DEFAULT"])
    m = re.search(r'^args="?(.*?)"?$', info, re.MULTILINE)
    if m is None:
        raise BootError("`grubby --info=DEFAULT` shows no args= line for the default kernel; "
                        "check the boot entries with `grubby --info=ALL`. Nothing was written.")
    line = m.group(1)
    additions = doctor.cmdline_additions(line)
    plan = Plan("grubby", "This host's boot entries are kept by grubby: setup adds the "
                "parameters to every kernel's entry with it.")
    if additions:
        # grubby drops every parameter of the same name before it appends one: a revert
        # appends the old value again, and removes only what was not there before.
        params = doctor.cmdline_params(line)
        added = doctor.cmdline_params(" ".join(additions))
        replaced = [f"{k}={params[k]}" if params[k] else k for k in added if k in params]
        new = [a for a in additions if doctor.cmdline_params(a).keys() - params.keys()]
        plan.commands = [["grubby", "--update-kernel=ALL", f"--args={' '.join(additions)}"]]
        if replaced:
            plan.revert_commands.append(["grubby", "--update-kernel=ALL",
                                         f"--args={' '.join(replaced)}"])
            plan.notes += [f"{w} on the default entry: grubby replaces it with setup's value "
                           "(--revert puts it back, at the end of the line)."
                           for w in replaced]
        if new:
            plan.revert_commands.append(["grubby", "--update-kernel=ALL",
                                         f"--remove-args={' '.join(new)}"])
    added = doctor.cmdline_params(" ".join(additions))
    plan.next_cmdline = " ".join([w for w in line.split()
                                  if not doctor.cmdline_params(w).keys() & added.keys()]
                                 + additions)
    return plan


def detect(root: Root) -> str:
    """grubby where it is the tool (Fedora, RHEL), systemd-boot where kernel-install writes
    boot loader entries, GRUB where /etc/default/grub and its generator are; else unknown."""
    if root.which("grubby"):
        return "grubby"
    conf = root.read("/etc/kernel/install.conf")  # kernel-install's: this one, else /usr's
    install_conf = as_text(conf if conf is not None else root.read("/usr/lib/kernel/install.conf"))
    if root.which("kernel-install") and (
            root.file(KERNEL_CMDLINE).exists()
            or re.search(r"^\s*layout\s*=\s*bls\s*$", install_conf, re.MULTILINE)
            or any(root.file(f"{esp}/loader/entries").is_dir() for esp in ESP_CANDIDATES)):
        return "systemd-boot"
    if root.file(DEFAULT_GRUB).exists() and root.which("update-grub", "grub-mkconfig",
                                                       "grub2-mkconfig"):
        return "grub"
    return "unknown"


def _unknown_plan(procfs: Path) -> Plan:
    current = proc_cmdline(procfs)
    additions = doctor.cmdline_additions(current or "")
    plan = Plan("unknown", "gvtd cannot tell how this host boots: it finds no grubby, no "
                f"{KERNEL_CMDLINE} or boot loader entries with kernel-install (systemd-boot), "
                f"and no {DEFAULT_GRUB} with update-grub or grub-mkconfig.",
                next_cmdline=None)
    if additions:
        plan.manual = ("Add these parameters to the kernel command line in your boot "
                       f"loader's configuration, then reboot: {' '.join(additions)}")
        plan.notes += _overridden(additions, [(str(procfs / "cmdline"), current or "")])
    else:
        plan.notes.append("The running kernel's command line already has what GVT-g needs; "
                          "gvtd cannot check that your boot loader keeps it for the next boot.")
    return plan


def modules_change(root: Root, base: Base) -> tuple[Change | None, list[str]]:
    """Our modules-load.d file, for the modules doctor wants that no file loads yet."""
    configured: set[str] = set()
    files = [root.file("/etc/modules")] + [p for d in MODULES_LOAD_DIRS
                                           for p in sorted(root.file(d).glob("*.conf"))]
    for f in files:
        inside = "/" + str(f.relative_to(root.path))
        data = base(MODULES_FILE) if inside == MODULES_FILE else root.read(inside)
        for raw in as_text(data).splitlines():
            word = raw.split("#")[0].strip()
            if word and not word.startswith(";"):
                configured.add(word.split()[0].replace("-", "_"))
    missing = [m.load for m in doctor.REQUIRED_MODULES
               if not any(n in configured for n in m.names)]
    if "mdev" in missing and any(root.file("/usr/lib/modules").glob(
            "*/kernel/drivers/vfio/mdev/vfio_mdev.ko*")):
        missing.append("vfio_mdev")  # a kernel before 5.16: mdev's VFIO half, on its own
    then = (HEADER + "# GVT-g's KVM half registers the GPU as an mdev parent; VFIO gives its "
            "vGPUs to VMs.\n" + "".join(f"{m}\n" for m in missing)).encode() if missing \
        else base(MODULES_FILE)
    now = root.read(MODULES_FILE)
    return (Change(MODULES_FILE, now, then) if now != then else None), missing


def modprobe_notes(root: Root) -> list[str]:
    """modprobe.d options that contradict the command line GVT-g needs. modprobe reads the
    kernel command line after its files (libkmod's kmod_config_new), so the command line's
    value comes last and wins, in the initramfs too; still, two places disagreeing is a
    trap for the next person who edits one of them."""
    wanted = doctor.cmdline_params(" ".join(p for _, p in doctor.REQUIRED_CMDLINE))
    out = []
    for d in MODPROBE_DIRS:
        for f in sorted(root.file(d).glob("*.conf")):
            for raw in as_text(root.read(f"{d}/{f.name}")).splitlines():
                words = raw.split("#")[0].split()
                if len(words) < 3 or words[0] != "options":
                    continue
                module = words[1].replace("-", "_")
                for word in words[2:]:
                    for key, value in doctor.cmdline_params(f"{module}.{word}").items():
                        if key in wanted and value != wanted[key]:
                            out.append(f"options {words[1]} {word} in {d}/{f.name}: the "
                                       f"kernel command line's {key}={wanted[key]} wins "
                                       "(modprobe reads it after its files), but remove it "
                                       "there to keep one value in one place.")
    return out


def plan(root: Root, base: Base, procfs: Path, read: Reader) -> Plan:
    """Everything setup would do on this root, nothing done yet."""
    tool = detect(root)
    if tool == "grub":
        p = _grub_plan(root, base)
    elif tool == "systemd-boot":
        p = _systemd_boot_plan(root, base, procfs)
    elif tool == "grubby":
        p = _grubby_plan(root, read)
    else:
        p = _unknown_plan(procfs)
    change, _ = modules_change(root, base)
    if change is not None:
        p.changes.append(change)
    p.notes += modprobe_notes(root)
    p.notes.append(NO_INITRAMFS)
    return p

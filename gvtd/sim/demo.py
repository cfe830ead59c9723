"""`make demo`: gvtd on an emulated Kaby Lake laptop, driven the way a person would.

Starts a private D-Bus bus and `gvtd --simulate` on it, then runs real gvt-client and busctl
commands and prints each with its output, like a terminal session. Cleans up after itself.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gvtd import names
from gvtd.sim.session import DBusDaemon, SimulatedHost

BOLD = "\033[1m" if sys.stdout.isatty() else ""
DIM = "\033[2m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""


def say(text: str) -> None:
    print(f"\n{BOLD}# {text}{RESET}", flush=True)


def run(env: dict[str, str], *argv: str, expect_fail: bool = False,
        quiet: bool = False) -> subprocess.CompletedProcess[str]:
    shown = list(argv)
    if shown[:3] == [sys.executable, "-m", "gvtd.client.main"]:
        shown = ["gvt-client", *shown[3:]]
    shown[0] = os.path.basename(shown[0])
    if not quiet:
        print(f"{DIM}${RESET} {shlex.join(shown)}", flush=True)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    out = (proc.stdout + proc.stderr).rstrip()
    if out and not quiet:
        print(out, flush=True)
    if (proc.returncode != 0) != expect_fail:
        raise SystemExit(f"demo: unexpected exit status {proc.returncode} of {shlex.join(shown)}")
    if expect_fail:
        print(f"{DIM}(exit status {proc.returncode}){RESET}")
    return proc


def client(env: dict[str, str], *args: str, expect_fail: bool = False) -> None:
    run(env, sys.executable, "-m", "gvtd.client.main", "--session", *args,
        expect_fail=expect_fail)


def simulator(env: dict[str, str], method: str, *args: str) -> None:
    busctl = shutil.which("busctl")
    assert busctl, "busctl (systemd) is needed for the demo"
    run(env, busctl, "--user", "call", names.SIMULATOR_BUS_NAME, names.SIMULATOR_PATH,
        names.SIMULATOR_IFACE, method, *args)


@contextmanager
def laptop(profile: str) -> Iterator[dict[str, str]]:
    """Another emulated laptop, on a bus of its own (one bus holds one gvtd): the
    environment its gvt-client and busctl commands run in."""
    bus = DBusDaemon()
    host = None
    try:
        host = SimulatedHost(bus.address, profile, stderr=subprocess.DEVNULL)
        yield dict(host.env, DBUS_SESSION_BUS_ADDRESS=bus.address)
    finally:
        if host is not None:
            host.stop()
        bus.stop()


@contextmanager
def watching(env: dict[str, str]) -> Iterator[Iterator[dict[str, Any]]]:
    """gvtd's own signals as gvt-client monitor prints them, from the moment it has
    subscribed (it has shown what is there): what follows an act, with no polling."""
    watch = subprocess.Popen([sys.executable, "-m", "gvtd.client.main", "--session",
                              "monitor", "--json"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert watch.stdout is not None
        for line in watch.stdout:
            if '"ready"' in line:
                break
        yield (json.loads(line) for line in watch.stdout)
    finally:
        watch.terminate()
        watch.wait(10)


def until_active(env: dict[str, str], name: str, act: Callable[[], None]) -> None:
    """Run act, then wait until vGPU name is active again: gvtd follows the kernel's
    events, after act has returned."""
    with watching(env) as events:
        act()
        for event in events:
            state = event.get("properties", {}).get("State")
            if event.get("kind") == "vgpu" and event.get("name") == name and state:
                print(f"{DIM}(monitor){RESET} vgpu {name}: State -> {state}", flush=True)
                if state == "active":
                    break


def config_dir(env: dict[str, str]) -> Path:
    """The simulated host's configuration directory (its gvtd.toml, vgpus.d)."""
    return Path(subprocess.run(
        ["busctl", "--user", "get-property", names.SIMULATOR_BUS_NAME, names.SIMULATOR_PATH,
         names.SIMULATOR_IFACE, "ConfigDir"], env=env, capture_output=True, text=True,
        check=True).stdout.split('"')[1])


def setup_demo(env: dict[str, str]) -> None:
    """`gvt-client setup --dry-run` on the simulated laptop's root: GRUB's own tools (this
    machine's /usr), /proc the simulation's, an /etc/default/grub holding the command line
    the emulated kernel was booted with, and the guide's modules file."""
    settings = tomllib.loads((config_dir(env) / "gvtd.toml").read_text())
    procfs = Path(settings["procfs_root"])
    booted = [w for w in (procfs / "cmdline").read_text().split()
              if not w.startswith(("BOOT_IMAGE=", "root=")) and w != "ro"]
    with tempfile.TemporaryDirectory(prefix="gvtd-demo-root.") as tmp:
        root = Path(tmp)
        (root / "usr").symlink_to("/usr")
        (root / "proc").symlink_to(procfs)
        (root / "etc/default/grub.d").mkdir(parents=True)
        (root / "etc/default/grub").write_text(
            Path("/usr/share/grub/default/grub").read_text().replace(
                'GRUB_CMDLINE_LINUX_DEFAULT="quiet"',
                f'GRUB_CMDLINE_LINUX_DEFAULT="{" ".join(booted)}"'))
        (root / "etc/modules-load.d").mkdir()
        (root / "etc/modules-load.d/gvt.conf").write_text("kvmgt\nmdev\nvfio_iommu_type1\n")
        run(env, sys.executable, "-m", "gvtd.client.main", "setup", "--dry-run", "--root",
            str(root))


def doctor_demo(env: dict[str, str]) -> None:
    """A second emulated host, on its own bus since one bus holds one gvtd, booted the way the
    guide warns against; every other failure is a profile too (`--simulate-profile help`)."""
    say("Another laptop, booted with i915.enable_guc=3 after the guide's enable_guc=0 "
        "(gvtd --simulate --simulate-profile guc-enabled): `gvt-client doctor` says why "
        "GVT-g does not work and what to do")
    with laptop("guc-enabled") as guc_env:
        client(guc_env, "doctor", expect_fail=True)
        say("`gvt-client setup --dry-run` on that laptop (booted through GRUB, its "
            "/etc/default/grub as it booted): the fix through GRUB's own tools, as a diff, "
            "and the command it would run; `sudo gvt-client setup` applies it")
        setup_demo(guc_env)
    say("With the fix (enable_guc=3 removed from the kernel command line, rebooted) it is "
        "the first laptop again, and every check passes")
    client(env, "doctor")


def new_vm_demo(env: dict[str, str]) -> None:
    """`gvt-client new` and `view` on the emulated laptop, then on a 7th generation one
    (its own bus and gvtd, as doctor_demo), whose CPU Windows 11 refuses."""
    media = tempfile.mkdtemp(prefix="gvtd-demo-media-")
    try:
        os.chmod(media, 0o755)  # QEMU's user must be able to read the ISOs
        iso, drivers = os.path.join(media, "Win11_x64.iso"), os.path.join(media, "virtio-win.iso")
        for path in (iso, drivers):
            with open(path, "wb") as f:
                f.write(bytes(4096))  # stand-ins: the simulation's libvirt boots nothing
            os.chmod(path, 0o644)
        # --no-audio: no sound server runs for the demo (a desktop has one)
        isos = ("--iso", iso, "--virtio-win", drivers, "--no-audio")
        say("A new Windows 11 VM the guide's way, in one command: first what it would make "
            "(the disk volume in libvirt's pool `default`, then the domain with its vGPU "
            "attached and tuned)")
        client(env, "new", "win11", *isos, "--dry-run")
        client(env, "new", "win11", *isos)
        client(env, "list")
        say("Then `gvt-client start win11` and `gvt-client view win11`: virt-viewer attached "
            "through libvirt, as SPICE listening nowhere needs (here, with no desktop, the "
            "command it would run)")
        client(env, "view", "--print", "win11")
        say("The name is taken now; and the same command on a 7th generation Kaby Lake "
            "laptop (--simulate-profile kabylake-7th), whose CPU Windows 11 Setup refuses")
        client(env, "new", "win11", *isos, expect_fail=True)
        with laptop("kabylake-7th") as old_env:
            client(old_env, "new", "win11", *isos, expect_fail=True)
    finally:
        shutil.rmtree(media, ignore_errors=True)


def guest_fault_demo(env: dict[str, str]) -> None:
    """The kernel log speaks: a guest page write error, which precedes a host hang, makes
    the vGPU failed and, with on_guest_fault = "shutdown", its domain shut down."""
    say("gvtd follows the kernel log: ask it to shut a VM down cleanly when GVT-g reports "
        "what precedes a host hang (on_guest_fault = \"shutdown\" in gvtd.toml)")
    settings = str(config_dir(env) / "gvtd.toml")
    run(env, "sh", "-c", f"echo 'on_guest_fault = \"shutdown\"' >> {shlex.quote(settings)}")
    client(env, "reload")
    client(env, "start", "win10")
    with watching(env) as events:
        say("Hours later the Windows driver reuses graphics memory behind GVT-g's back: the "
            "emulated kernel prints GVT-g's message into its /dev/kmsg")
        simulator(env, "KernelMessage", "ssuu", "", "gvt: guest page write error, gpa 1f2e3000",
                  "3", "0")
        for event in events:  # gvtd's own signals: no polling
            if event.get("kind") == "vgpu" and "Health" in event["properties"]:
                print(f"{DIM}(monitor){RESET} vgpu {event['name']}: Health -> "
                      f"{event['properties']['Health']}", flush=True)
            if event.get("path", "").startswith(names.DOMAIN_PREFIX) and \
                    event["properties"].get("State") == "shut-off":
                print(f"{DIM}(monitor){RESET} domain win10: State -> shut-off", flush=True)
                break
    client(env, "status")
    client(env, "list")


def sriov_demo() -> None:
    """An Alder Lake laptop (its own bus and gvtd, as doctor_demo): no GVT-g, its iGPU
    split into SR-IOV virtual functions by the i915 SR-IOV module, the same commands."""
    say("An Alder Lake laptop (gvtd --simulate --simulate-profile alderlake-sriov): no GVT-g "
        "from Tiger Lake on; the i915 SR-IOV module (i915.enable_guc=3 i915.max_vfs=7) splits "
        "its iGPU into PCI virtual functions instead, and doctor checks that side")
    with laptop("alderlake-sriov") as env:
        client(env, "doctor")
        client(env, "parents")
        say("Define a VF for the win10 VM: gvtd gives it a VF of its own (kept across "
            "reboots), turns the driver's autoprobe off, writes the count and binds the VF to "
            "vfio-pci with driver_override and drivers_probe, so no host driver touches it")
        client(env, "define", "win11", "--type", "vf", "--domain", "win10")
        run(env, "cat", str(config_dir(env) / "vgpus.d" / "win11.toml"))
        client(env, "list")
        say("Attach it: a PCI hostdev at the VF's address, managed='no' since gvtd did the "
            "binding; a VF has no display for SPICE, so the reply says where the picture "
            "comes from")
        client(env, "attach", "win10", "win11", "--no-audio", "--dry-run")
        client(env, "attach", "win10", "win11", "--no-audio")
        client(env, "start", "win10")
        say("A second VF while win10 runs: the kernel changes the count only through 0, "
            "which would take win10's VF away, so gvtd refuses and names the VM")
        client(env, "define", "second", "--type", "vf")
        client(env, "list")
        client(env, "stop", "win10", "--timeout", "30")
        client(env, "undefine", "second")
        say("A host driver takes the VF behind gvtd's back (Simulator BindDriver): gvtd "
            "binds it to vfio-pci again")
        until_active(env, "win11", lambda: (
            simulator(env, "UnbindDriver", "s", "0000:00:02.1"),
            simulator(env, "BindDriver", "ss", "0000:00:02.1", "i915")))
        client(env, "list")
        say("Reboot the emulated laptop: the kernel forgets every VF; gvtd makes the VF again, "
            "at the same address, before it reports READY")
        simulator(env, "Reboot")
        client(env, "list")
        client(env, "parents")


def main() -> int:
    # No system bus of the caller's: the simulation then brings its own, with a logind on it
    # that the demo makes suspend the laptop.
    os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
    bus = DBusDaemon()
    host = None
    try:
        say("A private D-Bus bus, and `gvtd --simulate`: the real daemon over an emulated "
            "Kaby Lake laptop (i915 at 0000:00:02.0, 256 MB aperture)")
        host = SimulatedHost(bus.address, stderr=subprocess.DEVNULL)
        env = dict(host.env)
        env["DBUS_SESSION_BUS_ADDRESS"] = bus.address
        say("The GPU and what it can be split into")
        client(env, "parents")
        client(env, "types")
        say("Define a persistent vGPU for the win10 VM: gvtd picks the smallest type that "
            "gives 1920x1200, writes vgpus.d/win10.toml atomically and creates it")
        client(env, "define", "win10", "--min-resolution", "1920x1200", "--domain", "win10")
        run(env, "cat", str(config_dir(env) / "vgpus.d" / "win10.toml"))
        client(env, "list")
        client(env, "types")
        say("Attach it to the win10 VM the way the guide does by hand (hostdev, OpRegion, "
            "SPICE GL on the render node): first as a dry run, then for real")
        client(env, "attach", "win10", "win10", "--dry-run")
        client(env, "attach", "win10", "win10")
        say("The guide's VM tuning step: CPU topology and pinning on the host's SMT "
            "siblings (this laptop pairs cpu0+cpu4, cpu1+cpu5, ...; CPU 0's core stays "
            "the host's), Hyper-V enlightenments, SPICE for a local viewer; warnings for "
            "the rest of its advice")
        client(env, "tune", "win10", "--dry-run")
        client(env, "tune", "win10")
        client(env, "tune", "win10", "--revert", "--dry-run")
        say("The command users came for: start the VM with its vGPU, and stop it")
        client(env, "start", "win10")
        say("(The libvirt test driver behind the simulation drops the qemu: namespace, so the "
            "lint below sees no OpRegion; libvirt's qemu driver keeps it.)")
        client(env, "status")
        client(env, "stop", "win10", "--timeout", "30")
        say("The laptop suspends (the simulation's logind, python-dbusmock's, announces "
            "PrepareForSleep(true)): GVT-g vGPUs do not survive suspend, so gvtd removes the "
            "idle win10 vGPU, remembers it and lets go of its delay lock")
        simulator(env, "PrepareForSleep", "b", "true")
        client(env, "list")
        say("It resumes (PrepareForSleep(false)): gvtd recreates exactly what it removed, "
            "with the same UUID")
        simulator(env, "PrepareForSleep", "b", "false")
        client(env, "list")
        say("Reboot the emulated host: the kernel forgets every mdev, gvtd starts again "
            "and recreates win10 before it reports READY")
        simulator(env, "Reboot")
        client(env, "list")
        client(env, "status")
        say("The kernel changes under gvtd: kvmgt unloads (the parent unregisters), then "
            "loads again; gvtd follows through uevents, with no polling")
        simulator(env, "UnregisterParent", "s", "0000:00:02.0")
        client(env, "list")
        simulator(env, "RegisterParent", "s", "0000:00:02.0")
        client(env, "list")
        say("Someone removes the vGPU behind gvtd's back: it is recreated (restore_removed)")
        uuid = json.loads(run(env, sys.executable, "-m", "gvtd.client.main", "--session",
                              "list", "--json", quiet=True).stdout)[0]["uuid"]
        simulator(env, "RemoveMdev", "s", uuid)
        client(env, "list")
        say("A second 1920x1200 vGPU does not fit in a 256 MB aperture (the host keeps 128 MB): "
            "gvtd says why and what to do, and writes nothing")
        client(env, "define", "second", "--type", "i915-GVTg_V5_4", expect_fail=True)
        say("The same API for scripts: JSON")
        client(env, "list", "--json")
        new_vm_demo(env)
        doctor_demo(env)
        guest_fault_demo(env)
        sriov_demo()
        say("Done; cleaning up")
        return 0
    finally:
        if host is not None:
            host.stop()
        bus.stop()


if __name__ == "__main__":
    sys.exit(main())

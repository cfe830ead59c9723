"""What `gvt-client setup` gives the next boot, per vGPU backend: doctor's command-line
checks and the parameters that make them pass, the modules to load, and for SR-IOV the
unit drop-in that lets gvtd bind VFs (docs/security.md, "SR-IOV").

doctor (GVT-g) and doctor_sriov own every parameter and its right value; this module only
picks the backend the host's GPU has and hands their knowledge to setup's plans, so that
what setup adds is exactly what doctor checks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gvtd import doctor, doctor_sriov

UNIT_DROPIN = "/etc/systemd/system/gvtd.service.d/sriov.conf"
DAEMON_RELOAD = ["systemctl", "daemon-reload"]
SYSTEMD_BOOTED = Path("/run/systemd/system")  # sd_booted(3)'s test


def _header(backend: str) -> str:
    return (f"# Written by `gvt-client setup` for Intel {backend}; `gvt-client setup "
            "--revert` removes it.\n")


@dataclass(frozen=True)
class Needs:
    """One backend's boot configuration, as data for setup's plans."""

    backend: str  # "GVT-g" or "SR-IOV", in what setup prints
    check: Callable[[str], list[doctor.Check]]  # doctor's findings on a command line
    additions: Callable[[str], list[str]]  # what to append so that they all pass
    params: tuple[str, ...]  # the whole line the guide sets (modprobe.d is compared to it)
    check_ids: tuple[str, ...]  # the command-line findings, in the guide's order
    modules: tuple[doctor.Module, ...]
    modules_why: str  # the modules-load.d file's comment
    started: str  # what doctor says after the reboot, once the line is in
    leftovers: Mapping[str, str] = field(default_factory=dict)  # parameter: why it is wrong
    notes: tuple[str, ...] = ()
    files: tuple[tuple[str, bytes], ...] = ()  # written whole, beside the boot configuration
    commands: tuple[list[str], ...] = ()  # run after files change, and after their revert

    @property
    def header(self) -> str:
        return _header(self.backend)


GVT = Needs("GVT-g", doctor.check_cmdline, doctor.cmdline_additions,
            tuple(p for _, p in doctor.REQUIRED_CMDLINE),
            tuple(c for c, _ in doctor.REQUIRED_CMDLINE), doctor.REQUIRED_MODULES,
            "# GVT-g's KVM half registers the GPU as an mdev parent; VFIO gives its vGPUs "
            "to VMs.\n", "i915.enable_gvt and mdev_types then say whether GVT-g started.")

VFIO = doctor.Module("sriov.vfio", doctor_sriov.VFIO, ("vfio_pci",),
                     "the driver gvtd binds each VF to, for a VM")


def unit_dropin(pf: doctor_sriov.Pf, sysfs: Path) -> bytes | None:
    """Opens the directory the PF's VFs appear in: its root bus's, or its bridge's (None:
    the PF is not below sysfs's devices, so there is no such directory to name)."""
    if not pf.gpu.path.parent.is_relative_to(sysfs.resolve() / "devices"):
        return None
    parent = pf.gpu.path.parent.relative_to(sysfs.resolve())
    return (f"{_header('SR-IOV')}# gvtd writes each VF's driver_override, in a directory the "
            "kernel makes\n# beside the PF only when the VFs appear.\n"
            f"[Service]\nReadWritePaths=-/sys/{parent}\n").encode()


def sriov(roots: doctor.HostRoots, gpu: doctor.Gpu, booted: bool) -> Needs:
    """The SR-IOV PF's line for its driver (i915's SR-IOV module or xe), vfio-pci, the
    drop-in; booted: the root is the running system and systemd runs it (it reloads the
    unit then; setup runs no systemctl for another root)."""
    pf = doctor_sriov.read_pf(roots, gpu)
    required = doctor_sriov.required_cmdline(pf)
    notes = []
    if pf.intended == "i915" and not pf.driver_can_sriov:
        notes.append(f"{pf.address} runs {'no driver' if pf.driver is None else pf.driver} "
                     "now, not the i915 SR-IOV module: install it "
                     f"({doctor_sriov.DKMS_REPO}, a DKMS package) before the reboot; the "
                     "command line setup writes is the one it needs.")
    dropin = unit_dropin(pf, roots.sysfs)
    if dropin is None:
        notes.append(f"{pf.address} is not below {roots.sysfs}/devices, so setup cannot name "
                     f"the directory its VFs appear in: write {UNIT_DROPIN} by hand "
                     "(docs/security.md, \"SR-IOV\").")
    elif not booted:
        notes.append(f"{UNIT_DROPIN} takes effect when systemd next reads its units "
                     "(`systemctl daemon-reload`, or the reboot).")
    return Needs(
        "SR-IOV", lambda line: doctor_sriov.check_next_cmdline(pf, roots, line),
        lambda line: doctor_sriov.cmdline_additions(pf, roots, line),
        tuple(p for _, params in required for p in params),
        tuple(c for c, _ in required), (VFIO,),
        "# gvtd binds each VF it makes to vfio-pci, which nothing else loads.\n",
        "sriov.driver then says whether the PF can make VFs.",
        {key: "GVT-g's, which an SR-IOV GPU does not have and its i915 SR-IOV module does "
              "not work with" for key in doctor_sriov.GVT_LEFTOVERS},
        tuple(notes), ((UNIT_DROPIN, dropin),) if dropin is not None else (),
        (DAEMON_RELOAD,) if booted else ())


def for_host(root: Path, procfs: Path) -> Needs:
    """The backend the root's GPU has (GVT-g when it has none that doctor knows)."""
    roots = doctor.HostRoots(sysfs=root / "sys", procfs=procfs, kernel_log=None, root=root)
    gpu = doctor.find_gpu(roots.sysfs)
    if gpu is not None and doctor.host_backend(gpu) == "sriov":
        return sriov(roots, gpu, root.resolve() == Path("/") and SYSTEMD_BOOTED.is_dir())
    return GVT

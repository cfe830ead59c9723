"""The emulated sysfs through FUSE: layout, content, errnos, synchronous writes, write log."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

from conftest import HostProc, write

GPU = "/devices/pci0000:00/0000:00:02.0"
TYPES = f"{GPU}/mdev_supported_types"
U1 = "11111111-2222-3333-4444-555555555555"
U2 = "66666666-7777-8888-9999-aaaaaaaaaaaa"
U3 = "00000000-0000-0000-0000-000000000003"


def available(host: HostProc) -> dict[str, int]:
    return {t: int(host.sys(f"{TYPES}/{t}/available_instances").read_text())
            for t in sorted(os.listdir(host.sys(TYPES)))}


def test_parent_layout(host: HostProc) -> None:
    dev = host.sys(GPU)
    assert (dev / "vendor").read_text() == "0x8086\n"
    assert (dev / "device").read_text() == "0x5917\n"
    assert (dev / "class").read_text() == "0x030000\n"
    uevent = (dev / "uevent").read_text()
    assert "DRIVER=i915\n" in uevent and "PCI_SLOT_NAME=0000:00:02.0\n" in uevent and "PCI_ID=8086:5917\n" in uevent
    assert os.readlink(dev / "driver") == "../../../bus/pci/drivers/i915"
    assert os.readlink(dev / "subsystem") == "../../../bus/pci"
    assert os.readlink(host.sys("/class/mdev_bus/0000:00:02.0")) == "../../devices/pci0000:00/0000:00:02.0"
    assert host.sys("/bus/pci/devices/0000:00:02.0").resolve() == dev
    t = host.sys(f"{TYPES}/i915-GVTg_V5_4")
    assert sorted(os.listdir(t)) == ["available_instances", "create", "description", "device_api", "devices", "name"]
    assert (t / "name").read_text() == "GVTg_V5_4\n"
    assert (t / "device_api").read_text() == "vfio-pci\n"
    assert (t / "description").read_text() == (
        "low_gm_size: 128MB\nhigh_gm_size: 512MB\nfence: 4\nresolution: 1920x1200\nweight: 4\n")
    assert stat.S_IMODE(os.stat(t / "create").st_mode) == 0o200
    assert stat.S_IMODE(os.stat(t / "name").st_mode) == 0o444


def test_desktop_profile(make_host: type[HostProc]) -> None:
    host = make_host("desktop")
    assert host.sys(f"{GPU}/device").read_text() == "0x3e92\n"
    assert "PCI_ID=8086:3E92\n" in host.sys(f"{GPU}/uevent").read_text()
    assert available(host) == {"i915-GVTg_V5_1": 1, "i915-GVTg_V5_2": 2, "i915-GVTg_V5_4": 5, "i915-GVTg_V5_8": 7}


def test_create_is_synchronous_and_lays_out_the_mdev(host: HostProc) -> None:
    assert available(host) == {"i915-GVTg_V5_1": 0, "i915-GVTg_V5_2": 0, "i915-GVTg_V5_4": 1, "i915-GVTg_V5_8": 2}
    assert write(host.sys(f"{TYPES}/i915-GVTg_V5_8/create"), U1.upper() + "\n") == "ok"
    # Already there when the write returned, named in lower case.
    link = host.sys(f"/bus/mdev/devices/{U1}")
    assert os.readlink(link) == f"../../../devices/pci0000:00/0000:00:02.0/{U1}"
    mdev = link.resolve()
    assert mdev == host.sys(f"{GPU}/{U1}")
    assert (mdev / "uevent").read_text() == "DRIVER=intel_vgpu_mdev\n"  # no MDEV_TYPE on 6.1
    assert os.readlink(mdev / "mdev_type") == "../mdev_supported_types/i915-GVTg_V5_8"
    assert (mdev / "mdev_type").resolve() == host.sys(f"{TYPES}/i915-GVTg_V5_8")
    assert os.readlink(mdev / "subsystem") == "../../../../bus/mdev"
    assert (mdev / "subsystem").resolve() == host.sys("/bus/mdev")
    assert (mdev / "driver").resolve() == host.sys("/bus/mdev/drivers/intel_vgpu_mdev")
    assert (mdev / "vfio-dev/vfio0/subsystem").resolve() == host.sys("/class/vfio-dev")
    assert os.readlink(host.sys(f"{TYPES}/i915-GVTg_V5_8/devices/{U1}")) == f"../../../{U1}"
    assert available(host) == {"i915-GVTg_V5_1": 0, "i915-GVTg_V5_2": 0, "i915-GVTg_V5_4": 0, "i915-GVTg_V5_8": 1}

    assert write(host.sys(f"{TYPES}/i915-GVTg_V5_8/create"), U2) == "ok"  # each gets its own vfioN
    assert os.listdir(host.sys(f"{GPU}/{U2}/vfio-dev")) == ["vfio1"]
    assert set(available(host).values()) == {0}

    assert write(mdev / "remove", "0\n") == "ok"  # zero: nothing happens
    assert mdev.exists()
    assert write(mdev / "remove", "1\n") == "ok"
    assert not mdev.exists() and not os.path.lexists(link)
    assert not os.path.lexists(host.sys(f"{TYPES}/i915-GVTg_V5_8/devices/{U1}"))
    assert available(host)["i915-GVTg_V5_8"] == 1
    assert [m[0] for m in host.call("mdevs")] == [U2]
    # vfioN numbers are not reused while the kernel runs.
    assert write(host.sys(f"{TYPES}/i915-GVTg_V5_8/create"), U3) == "ok"
    assert os.listdir(host.sys(f"{GPU}/{U3}/vfio-dev")) == ["vfio2"]
    assert sorted(m[0] for m in host.call("mdevs")) == sorted([U2, U3])


def test_errnos(host: HostProc) -> None:
    create8 = host.sys(f"{TYPES}/i915-GVTg_V5_8/create")
    for bad in ["nonsense\n", U1[:-1] + "\n", U1 + "\n\n", "{" + U1 + "}"]:
        assert write(create8, bad) == "EINVAL", bad
    assert write(create8, U1 + "\n") == "ok"
    assert write(host.sys(f"{TYPES}/i915-GVTg_V5_4/create"), U1.upper() + "\n") == "EEXIST"
    assert write(host.sys(f"{TYPES}/i915-GVTg_V5_2/create"), U2 + "\n") == "ENOSPC"
    # The 64 MB of low gm left after a V5_8 holds one more V5_8 and no V5_4.
    assert write(host.sys(f"{TYPES}/i915-GVTg_V5_4/create"), U2 + "\n") == "ENOSPC"
    assert write(create8, U2 + "\n") == "ok"
    assert write(create8, U3 + "\n") == "ENOSPC"
    # Read-only attributes refuse writers, write-only ones refuse readers (even root).
    assert write(host.sys(f"{TYPES}/i915-GVTg_V5_8/available_instances"), "9\n") == "EACCES"
    assert write(host.sys(f"{GPU}/vendor"), "0x1\n") == "EACCES"
    try:
        open(create8).read()
        raise AssertionError("create is readable")
    except PermissionError:
        pass
    assert write(host.sys(f"{GPU}/{U1}/remove"), "yes\n") == "EINVAL"
    # A device that vanished: gone from the tree (ENOENT); a stale open file says ENODEV.
    remove = host.sys(f"{GPU}/{U2}/remove")
    fd = os.open(remove, os.O_WRONLY)
    try:
        host.call("remove_mdev", U2)
        assert write(remove, "1\n") == "ENOENT"
        try:
            os.write(fd, b"1\n")
            raise AssertionError("stale write succeeded")
        except OSError as e:
            assert e.errno == errno.ENODEV
    finally:
        os.close(fd)
    try:
        host.call("remove_mdev", U2)
        raise AssertionError("second remove succeeded")
    except OSError as e:
        assert e.errno == errno.ENOENT
    # Unregistering removes the mdevs, the types and the class link; a held create file: ENODEV.
    fd = os.open(create8, os.O_WRONLY)
    try:
        host.call("unregister_parent", "0000:00:02.0")
        try:
            os.write(fd, (U3 + "\n").encode())
            raise AssertionError("create on an unregistered parent succeeded")
        except OSError as e:
            assert e.errno == errno.ENODEV
    finally:
        os.close(fd)
    assert not host.sys(TYPES).exists() and not host.sys(f"{GPU}/{U1}").exists()
    assert not os.path.lexists(host.sys("/class/mdev_bus/0000:00:02.0"))
    assert host.call("mdevs") == []
    host.call("register_parent", "0000:00:02.0")
    assert available(host)["i915-GVTg_V5_8"] == 2


def test_a_remove_refused_or_held_as_while_qemu_has_the_device_open(host: HostProc) -> None:
    create8 = host.sys(f"{TYPES}/i915-GVTg_V5_8/create")
    assert write(create8, U1 + "\n") == "ok" and write(create8, U2 + "\n") == "ok"
    # kvmgt's EBUSY: the mdev stays, and the refusal lasts for the number of removes asked
    host.call("refuse_removes", U1, 1)
    assert write(host.sys(f"{GPU}/{U1}/remove"), "1\n") == "EBUSY"
    assert sorted(m[0] for m in host.call("mdevs")) == sorted([U1, U2])
    # vfio waiting for QEMU to let go: the write hangs, the mdev stays, the rest answers
    host.call("hold_remove", U2)
    held: list[str] = []
    writer = threading.Thread(target=lambda: held.append(write(host.sys(f"{GPU}/{U2}/remove"),
                                                               "1\n")))
    writer.start()
    assert host.call("wait_stalled", 30) == f"/sys{GPU}/{U2}/remove"
    assert host.sys(f"{GPU}/{U2}/remove").exists() and held == []
    assert write(host.sys(f"{GPU}/{U1}/remove"), "1\n") == "ok"  # the retry goes through
    host.call("release_writes")
    writer.join(30)
    assert held == ["ok"] and host.call("mdevs") == []
    assert [r[2] for r in host.call("write_log")[2:]] == ["EBUSY", "ok", "ok"]
    try:
        host.call("hold_remove", U2)
        raise AssertionError("held the remove of an mdev that is gone")
    except OSError as e:
        assert e.errno == errno.ENOENT


def test_write_log(host: HostProc) -> None:
    create = f"/sys{TYPES}/i915-GVTg_V5_8/create"
    assert write(host.sys(create), U1 + "\n") == "ok"
    assert write(host.sys(create), U1 + "\n") == "EEXIST"
    assert write(host.sys(create), "x") == "EINVAL"
    assert write(host.sys(f"{GPU}/{U1}/remove"), "1\n") == "ok"
    assert write(host.sys(f"{GPU}/class"), "0\n") == "EACCES"  # refused at open: no data seen
    log = host.call("write_log")
    assert all(0 <= r[3] < 30 for r in log)  # how long the kernel took to answer
    assert [r[:3] for r in log] == [
        [create, U1 + "\n", "ok"],
        [create, U1 + "\n", "EEXIST"],
        [create, "x", "EINVAL"],
        [f"/sys{GPU}/{U1}/remove", "1\n", "ok"],
        [f"/sys{GPU}/class", "", "EACCES"],
    ]


def test_shell_echo(host: HostProc) -> None:
    """``echo > create`` opens with O_TRUNC; the kernel's errno text reaches the shell."""
    create = host.sys(f"{TYPES}/i915-GVTg_V5_4/create")
    ok = subprocess.run(["bash", "-c", f"echo {U1} > {create}"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    full = subprocess.run(["bash", "-c", f"echo {U2} > {create}"], capture_output=True, text=True)
    assert full.returncode != 0 and "No space left on device" in full.stderr


def test_every_file_reads(make_host: type[HostProc]) -> None:
    host = make_host("mtty")
    assert write(host.sys(f"{TYPES}/i915-GVTg_V5_4/create"), U1) == "ok"
    assert write(host.sys("/devices/virtual/mtty/mtty/mdev_supported_types/mtty-2/create"), U2) == "ok"
    root = host.sys("/devices")
    seen: dict[str, str] = {}
    for d, dirs, files in os.walk(root):
        for name in files + dirs:
            p = Path(d, name)
            st = os.lstat(p)
            rel = "/" + str(p.relative_to(host.sys()))
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(p)
                assert target.startswith(host.root + "/sys/") and os.path.exists(target), (rel, target)
            elif stat.S_ISREG(st.st_mode):
                assert st.st_size == 4096
                if st.st_mode & 0o444:
                    seen[rel] = p.read_text()
                    assert len(seen[rel]) < 4096
                else:
                    assert name in ("create", "remove"), rel
    mtty = "/devices/virtual/mtty/mtty"
    assert seen[f"{mtty}/mdev_supported_types/mtty-1/available_instances"] == "2\n"
    assert seen[f"{mtty}/mdev_supported_types/mtty-2/name"] == "Dual port serial\n"
    assert f"{mtty}/mdev_supported_types/mtty-1/description" not in seen  # mtty has none
    assert seen[f"{mtty}/{U2}/uevent"] == "DRIVER=mtty\n"
    assert seen[f"{GPU}/{U1}/vfio-dev/vfio0/uevent"] == ""
    assert seen["/devices/pci0000:00/uevent"] == ""
    assert seen[f"{TYPES}/i915-GVTg_V5_8/available_instances"] == "0\n"  # the V5_4 took the low gm
    assert seen[f"{GPU}/{U1}/intel_vgpu/vgpu_id"] == "1\n"  # kvmgt's, on GVT-g's mdevs only
    assert f"{mtty}/{U2}/intel_vgpu/vgpu_id" not in seen
    # parents, GVT types, mtty types, mdevs (and the GVT-g one's vgpu_id), bridge
    assert len(seen) == 6 + 1 + 4 * 4 + 2 * 3 + 2 * 2 + 1 + 1
    assert os.readlink(host.sys(f"{mtty}/subsystem")) == "../../../../class/mtty"
    assert os.readlink(host.sys(f"{mtty}/{U2}/subsystem")) == "../../../../../bus/mdev"


def test_concurrent_creates(host: HostProc) -> None:
    """Eight writers race for two V5_8 slots: exactly two win, the rest get ENOSPC."""
    create = host.sys(f"{TYPES}/i915-GVTg_V5_8/create")
    results: list[str] = []
    start = threading.Barrier(8)

    def one(i: int) -> None:
        start.wait()
        results.append(write(create, f"00000000-0000-0000-0000-00000000000{i}\n"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["ENOSPC"] * 6 + ["ok"] * 2
    assert len(os.listdir(host.sys("/bus/mdev/devices"))) == 2


def test_children_see_the_testbed(host: HostProc) -> None:
    """A preloaded child with UMOCKDEV_DIR sees /sys as the host serves it, through libudev too."""
    host.call("add_foreign_mdev", "0000:00:02.0", "i915-GVTg_V5_4")
    code = (
        "import os, pyudev\n"
        "ctx = pyudev.Context()\n"
        "for d in ctx.list_devices(subsystem='mdev'):\n"
        "    print(d.sys_name, os.path.basename(os.readlink(d.sys_path + '/mdev_type')), d.driver)\n"
        "print(open('/sys/class/mdev_bus/0000:00:02.0/mdev_supported_types/i915-GVTg_V5_4/available_instances').read().strip())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=host.child_env(), capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0, out.stderr
    (uuid, _, _), = host.call("mdevs")
    assert out.stdout.splitlines() == [f"{uuid} i915-GVTg_V5_4 intel_vgpu_mdev", "0"]

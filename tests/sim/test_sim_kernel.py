"""The pure kernel model: errnos and GVT-g capacity arithmetic, without FUSE or umockdev."""

from __future__ import annotations

import errno

import pytest

from gvtd.sim.kernel import PROFILE_HELP, PROFILES, CreateError, Kernel, describe, make_kernel

GPU = "0000:00:02.0"
U1 = "11111111-2222-3333-4444-555555555555"
U2 = "66666666-7777-8888-9999-aaaaaaaaaaaa"


def avail(k: Kernel, parent: str = GPU) -> dict[str, int]:
    return {t: k.available(parent, t) for t in k.parent(parent).types}


def errno_of(fn: object, *args: object) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.errno


def test_available_instances_with_256mb_aperture() -> None:
    k = make_kernel()
    # The host keeps 128 MB of the 256 MB aperture (as upstream): 128 MB of low gm for guests,
    # 2 of 64 MB, 1 of 128 MB, none bigger; high gm (3456 MB) and fences (7 sets) are not short.
    assert k.free(GPU) == {"low": 128, "high": 4096 - 256 - 384, "fence": 32 - 4}
    assert avail(k) == {"i915-GVTg_V5_8": 2, "i915-GVTg_V5_4": 1, "i915-GVTg_V5_2": 0, "i915-GVTg_V5_1": 0}
    k.create(GPU, "i915-GVTg_V5_8", U1 + "\n")
    assert avail(k) == {"i915-GVTg_V5_8": 1, "i915-GVTg_V5_4": 0, "i915-GVTg_V5_2": 0, "i915-GVTg_V5_1": 0}
    assert errno_of(k.create, GPU, "i915-GVTg_V5_4", U2) == errno.ENOSPC
    k.create(GPU, "i915-GVTg_V5_8", U2)
    assert avail(k) == {"i915-GVTg_V5_8": 0, "i915-GVTg_V5_4": 0, "i915-GVTg_V5_2": 0, "i915-GVTg_V5_1": 0}
    k.remove(U1)
    assert avail(k)["i915-GVTg_V5_8"] == 1  # given back as soon as teardown starts
    k.drop(U1)
    assert avail(k) == {"i915-GVTg_V5_8": 1, "i915-GVTg_V5_4": 0, "i915-GVTg_V5_2": 0, "i915-GVTg_V5_1": 0}


def test_big_aperture_and_fence_limit() -> None:
    k = make_kernel("big-aperture")
    # V5_8: min(low (512 - 128) // 64 = 6, high (4096 - 512 - 384) // 384 = 8, fence 28 // 4 = 7).
    assert k.free(GPU) == {"low": 384, "high": 3200, "fence": 28}
    assert avail(k) == {"i915-GVTg_V5_8": 6, "i915-GVTg_V5_4": 3, "i915-GVTg_V5_2": 1, "i915-GVTg_V5_1": 0}


def test_desktop_is_limited_by_high_gm_and_fences() -> None:
    k = make_kernel("desktop")
    gpu = k.parent(GPU)
    assert (gpu.attrs["vendor"], gpu.attrs["device"]) == ("0x8086\n", "0x3e92\n")
    assert gpu.uevent["PCI_ID"] == "8086:3E92"
    # 1024 MB aperture: low gm (896 MB) is plentiful, the rest of the 4 GB and the fences are not.
    assert k.free(GPU) == {"low": 1024 - 128, "high": 4096 - 1024 - 384, "fence": 28}
    # V5_8: min(896 // 64 = 14, 2688 // 384 = 7, 28 // 4 = 7); V5_4: min(7, 2688 // 512 = 5, 7);
    # V5_2: min(3, 2688 // 1024 = 2, 7); V5_1: min(1, 2688 // 2048 = 1, 7).
    assert avail(k) == {"i915-GVTg_V5_8": 7, "i915-GVTg_V5_4": 5, "i915-GVTg_V5_2": 2, "i915-GVTg_V5_1": 1}
    for i in range(7):
        k.create(GPU, "i915-GVTg_V5_8", f"00000000-0000-0000-0000-00000000000{i}")
    assert k.free(GPU) == {"low": 896 - 7 * 64, "high": 2688 - 7 * 384, "fence": 0}
    assert set(avail(k).values()) == {0}


def test_create_errnos() -> None:
    k = make_kernel("mtty")
    assert k.create(GPU, "i915-GVTg_V5_8", U1.upper() + "\n") == U1  # named in lower case
    assert errno_of(k.create, GPU, "i915-GVTg_V5_8", U1.upper()) == errno.EEXIST
    assert errno_of(k.create, "mtty", "mtty-1", U1) == errno.EEXIST  # across parents
    for bad in ["", "1234", U1[:-1], U1 + "\n\n", U1.replace("-", "_"), "g" + U1[1:], " " + U1]:
        assert errno_of(k.create, GPU, "i915-GVTg_V5_8", bad) == errno.EINVAL, bad
    # The 37th character is not looked at, as the kernel only checks the length.
    assert k.create(GPU, "i915-GVTg_V5_8", U2 + "x") == U2
    with pytest.raises(CreateError) as full:  # two V5_8 took the guests' 128 MB of low gm
        k.create(GPU, "i915-GVTg_V5_8", "00000000-0000-0000-0000-000000000001")
    assert full.value.errno == errno.ENOSPC and full.value.probed
    k.parent(GPU).registered = False
    assert errno_of(k.create, GPU, "i915-GVTg_V5_8", "00000000-0000-0000-0000-000000000002") == errno.ENODEV
    assert errno_of(k.remove, "00000000-0000-0000-0000-000000000009") == errno.ENOENT
    k.remove(U1)
    assert errno_of(k.remove, U1) == errno.ENOENT  # already on its way out


def test_refused_removes() -> None:
    k = make_kernel()
    k.create(GPU, "i915-GVTg_V5_8", U1)
    assert errno_of(k.refuse_removes, U2, 1) == errno.ENOENT
    k.refuse_removes(U1, 2)
    assert [errno_of(k.remove, U1) for _ in range(2)] == [errno.EBUSY] * 2
    assert not k.mdevs[U1].removing and k.available(GPU, "i915-GVTg_V5_8") == 1
    k.remove(U1)  # the third goes through
    k.drop(U1)
    k.create(GPU, "i915-GVTg_V5_8", U1)
    k.refuse_removes(U1, 1)
    k.remove(U1, force=True)  # the parent's driver unloading takes it regardless


def test_mtty_ports_and_mdpy_eusers() -> None:
    k = make_kernel("mtty")
    assert avail(k, "mtty") == {"mtty-1": 4, "mtty-2": 2}
    k.create("mtty", "mtty-2", U1)
    k.create("mtty", "mtty-1", U2)
    assert avail(k, "mtty") == {"mtty-1": 1, "mtty-2": 0}
    assert errno_of(k.create, "mtty", "mtty-2", "00000000-0000-0000-0000-000000000001") == errno.ENOSPC
    assert k.parent("mtty").types["mtty-1"].description is None

    k = make_kernel("mdpy")
    for i in range(4):
        k.create("mdpy", "mdpy-vga", f"00000000-0000-0000-0000-00000000000{i}")
    with pytest.raises(CreateError) as full:
        k.create("mdpy", "mdpy-hd", "00000000-0000-0000-0000-000000000009")
    assert full.value.errno == errno.EUSERS and not full.value.probed


def test_profiles() -> None:
    k = make_kernel("multi", n=3)
    assert list(k.parents) == [GPU, "mtty0", "mtty1", "mtty2"]
    assert not make_kernel("unregistered").parent(GPU).registered
    with pytest.raises(ValueError):
        make_kernel("nope")
    k = make_kernel()
    k.create(GPU, "i915-GVTg_V5_8", U1)
    k.forget()
    assert k.mdevs == {} and avail(k)["i915-GVTg_V5_8"] == 2


def test_every_profile_is_described() -> None:
    assert list(describe()) == list(PROFILES)
    assert set(PROFILE_HELP) == set(PROFILES)
    for name, text in describe().items():
        assert text.strip() and "\n" not in text, name
        make_kernel(name)  # each one builds with its defaults

"""The pure kernel model: errnos and GVT-g capacity arithmetic, without FUSE or umockdev."""

from __future__ import annotations

import errno

import pytest

from gvtd.sim.kernel import CreateError, Kernel, make_kernel

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
    # (256 - 64) low gm free: 3 of 64 MB, 1 of 128 MB, none bigger.
    assert avail(k) == {"i915-GVTg_V5_8": 3, "i915-GVTg_V5_4": 1, "i915-GVTg_V5_2": 0, "i915-GVTg_V5_1": 0}
    k.create(GPU, "i915-GVTg_V5_8", U1 + "\n")
    assert avail(k) == {"i915-GVTg_V5_8": 2, "i915-GVTg_V5_4": 1, "i915-GVTg_V5_2": 0, "i915-GVTg_V5_1": 0}
    k.create(GPU, "i915-GVTg_V5_4", U2)
    assert avail(k) == {"i915-GVTg_V5_8": 0, "i915-GVTg_V5_4": 0, "i915-GVTg_V5_2": 0, "i915-GVTg_V5_1": 0}
    k.remove(U1)
    assert avail(k)["i915-GVTg_V5_8"] == 1  # given back as soon as teardown starts
    k.drop(U1)
    assert avail(k)["i915-GVTg_V5_8"] == 1


def test_big_aperture_and_fence_limit() -> None:
    k = make_kernel("big-aperture")
    # (512 - 64) // 64 = 7 by low gm, and (32 - 4) // 4 = 7 by fences.
    assert avail(k) == {"i915-GVTg_V5_8": 7, "i915-GVTg_V5_4": 3, "i915-GVTg_V5_2": 1, "i915-GVTg_V5_1": 0}


def test_create_errnos() -> None:
    k = make_kernel("mtty")
    assert k.create(GPU, "i915-GVTg_V5_4", U1.upper() + "\n") == U1  # named in lower case
    assert errno_of(k.create, GPU, "i915-GVTg_V5_8", U1.upper()) == errno.EEXIST
    assert errno_of(k.create, "mtty", "mtty-1", U1) == errno.EEXIST  # across parents
    for bad in ["", "1234", U1[:-1], U1 + "\n\n", U1.replace("-", "_"), "g" + U1[1:], " " + U1]:
        assert errno_of(k.create, GPU, "i915-GVTg_V5_8", bad) == errno.EINVAL, bad
    # The 37th character is not looked at, as the kernel only checks the length.
    assert k.create(GPU, "i915-GVTg_V5_8", U2 + "x") == U2
    with pytest.raises(CreateError) as full:
        k.create(GPU, "i915-GVTg_V5_4", "00000000-0000-0000-0000-000000000001")
    assert full.value.errno == errno.ENOSPC and full.value.probed
    k.parent(GPU).registered = False
    assert errno_of(k.create, GPU, "i915-GVTg_V5_8", "00000000-0000-0000-0000-000000000002") == errno.ENODEV
    assert errno_of(k.remove, "00000000-0000-0000-0000-000000000009") == errno.ENOENT
    k.remove(U1)
    assert errno_of(k.remove, U1) == errno.ENOENT  # already on its way out


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
    assert k.mdevs == {} and avail(k)["i915-GVTg_V5_8"] == 3

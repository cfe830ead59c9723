"""Kernel log records and what gvtd makes of GVT-g's: the parse of /dev/kmsg's format and
the trust rules (gvtd.kmsg, gvtd.gvt)."""

from gvtd import gvt, kmsg
from gvtd.sim.kmsg import format_record


def test_a_record_with_its_dictionary() -> None:
    data = format_record(42, 1234567, "vfio_mdev 6a0c: tab\there", level=3, facility=0,
                         fields={"SUBSYSTEM": "mdev", "DEVICE": "+mdev:6a0c"})
    r = kmsg.parse(data)
    assert r is not None
    assert (r.facility, r.level, r.seq, r.usec) == (0, 3, 42, 1234567)
    assert r.text == "vfio_mdev 6a0c: tab\there"  # the kernel escapes it as \x09
    assert b"\\x09" in data
    assert r.fields == {"SUBSYSTEM": "mdev", "DEVICE": "+mdev:6a0c"}
    assert r.from_kernel


def test_what_a_process_writes_is_not_the_kernels() -> None:
    """devkmsg_write keeps LOG_USER unless the prefix names another facility, so facility
    0 (the kernel's) never comes from a write: "<3>" alone gives prio 11."""
    r = kmsg.parse(b"11,7,100,-;gvt: vgpu 1: guest page write error\n")
    assert r is not None and (r.facility, r.level) == (1, 3) and not r.from_kernel


def test_anything_else_is_not_a_record() -> None:
    assert kmsg.parse(b"DMAR: IOMMU enabled\n") is None


def test_gvt_messages() -> None:
    m = gvt.classify("gvt: vgpu 2: fail to emulate MMIO read 00064320", 3)
    assert m is not None and (m.vgpu_id, m.known.id) == (2, "unknown")
    m = gvt.classify("gvt: guest page write error, gpa 1f2e3000", 3)
    assert m is not None and (m.vgpu_id, m.known.id, m.known.hang) == (None, "page-write", True)
    assert gvt.classify("gvt: vgpu 1: invalid untracked MMIO 0x4 len 4", 3) is None  # init
    assert gvt.classify("usb 1-1: Product: gvt: vgpu 1: guest page write error", 3) is None
    # a process name the kernel prints first, at info level ("%s[%d]: segfault at")
    assert gvt.classify("gvt: vgpu 1: [42]: segfault at 0 ip 0 sp 0 error 4", 6) is None
    m = gvt.classify("vfio_pin_pages_remote: RLIMIT_MEMLOCK (67108864) exceeded", 4)
    assert m is not None and m.known.id == "memlock"


def test_failsafe_takes_the_reason_printed_before_it() -> None:
    c = gvt.Classifier()
    assert c.feed("Graphics resource is not enough for the guest", 3) is None
    m = c.feed("Now vgpu 3 will enter failsafe mode.", 3)
    assert m is not None and (m.vgpu_id, m.known.id) == (3, "failsafe.resources")
    m = c.feed("Now vgpu 3 will enter failsafe mode.", 3)  # the reason is used once
    assert m is not None and m.known.id == "failsafe"

"""What the daemon loads before READY=1: only what its first reconcile needs."""

import subprocess
import sys

PROBE = """
import sys
import gvtd.daemon
import gvtd.bus.service
print(sorted(m for m in ("libvirtmod", "libvirtaio", "gvtd.doctor", "lxml.etree")
             if m in sys.modules))
"""


def test_libvirt_doctor_and_lxml_are_not_loaded_by_the_daemon_s_imports() -> None:
    """libvirt is connected after READY=1, doctor runs on request and lxml edits domain XML
    on request; loading any up front delayed every start (about 20 ms for libvirt-python
    and its library, 15 to 40 ms for lxml here)."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_libvirt_loads_on_first_use() -> None:
    probe = "import gvtd.virt.connection as c; print(c.libvirt.VIR_DOMAIN_RUNNING, c._state(1))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["1", "running"]

"""The daemon as systemd runs it: sd_notify READY/STATUS/STOPPING, SIGTERM keeps vGPUs,
logs to the journal with structured fields."""

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gvtd import daemon
from gvtd.sim.session import DBusDaemon, NotifySocket
from harness import Simulation


def test_notify_ready_status_stopping_and_sigterm_keeps_vgpus(sim: Simulation,
                                                               tmp_path: Path) -> None:
    """A second daemon on its own bus over the same emulated kernel, with our notify socket."""
    (tmp_path / "etc" / "vgpus.d").mkdir(parents=True)
    (tmp_path / "etc" / "vgpus.d" / "a.toml").write_text(
        'uuid = "11111111-2222-4333-8444-555555555555"\ntype = "i915-GVTg_V5_8"\n')
    notify = NotifySocket(tmp_path)
    bus = DBusDaemon()
    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=bus.address, NOTIFY_SOCKET=notify.path,
               UMOCKDEV_DIR=str(sim.root),
               LD_PRELOAD="libumockdev-preload.so.0")
    proc = subprocess.Popen([sys.executable, "-m", "gvtd.daemon", "--session",
                             "--config-dir", str(tmp_path / "etc"),
                             "--state-dir", str(tmp_path / "state")],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        ready = notify.wait("READY=1")
        status = notify.wait("STATUS=")
        assert status == "STATUS=1 vGPU active on 1 parent", (ready, status)
        assert (sim.root / "sys/bus/mdev/devices/11111111-2222-4333-8444-555555555555").exists()
        proc.send_signal(signal.SIGTERM)
        assert notify.wait("STOPPING=1")
        assert proc.wait(30) == 0
        # SIGTERM leaves the vGPU for the VM that may use it
        assert (sim.root / "sys/bus/mdev/devices/11111111-2222-4333-8444-555555555555").exists()
        assert not [w for w in sim.write_log() if w[0].endswith("/remove")]
        assert proc.stderr is not None
        assert "Created vGPU a" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        bus.stop()
        notify.close()


def test_second_daemon_cannot_take_the_name(sim: Simulation, tmp_path: Path) -> None:
    env = dict(sim.env, UMOCKDEV_DIR=str(sim.root), LD_PRELOAD="libumockdev-preload.so.0")
    env.pop("NOTIFY_SOCKET")
    p = subprocess.run([sys.executable, "-m", "gvtd.daemon", "--session",
                        "--config-dir", str(tmp_path), "--state-dir", str(tmp_path / "s")],
                       env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert "another gvtd is running" in p.stderr


def test_lost_bus_exits_with_a_clear_line(tmp_path: Path) -> None:
    bus = DBusDaemon()
    notify = NotifySocket(tmp_path)
    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=bus.address, NOTIFY_SOCKET=notify.path)
    proc = subprocess.Popen([sys.executable, "-m", "gvtd.daemon", "--session",
                             "--config-dir", str(tmp_path), "--state-dir", str(tmp_path / "s")],
                            env=env, stderr=subprocess.PIPE, text=True)
    notify.wait("READY=1")
    bus.stop()
    assert proc.wait(30) == 1
    assert proc.stderr is not None
    assert "Lost the connection to the D-Bus daemon" in proc.stderr.read()
    notify.close()


def test_journal_gets_structured_fields(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    """Under systemd (JOURNAL_STREAM naming our stderr) records go to the journal with
    VGPU_NAME/VGPU_UUID/PARENT fields; anywhere else they are plain stderr lines."""
    from systemd import journal

    sent: list[dict] = []
    st = os.fstat(sys.stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    daemon.setup_logging("info")
    try:
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, journal.JournalHandler)
        # the journal socket is the one thing not here: capture what would be sent to it
        handler.send = lambda MESSAGE, **kw: sent.append({"MESSAGE": MESSAGE, **kw})
        logging.getLogger("gvtd.host").info("Created vGPU %s", "win10",
                                            extra={"VGPU_NAME": "win10", "VGPU_UUID": "u",
                                                   "PARENT": "0000:00:02.0"})
    finally:
        monkeypatch.delenv("JOURNAL_STREAM")
        daemon.setup_logging("info")
    (entry,) = sent
    assert entry["MESSAGE"] == "Created vGPU win10"
    assert (entry["VGPU_NAME"], entry["VGPU_UUID"], entry["PARENT"]) == \
        ("win10", "u", "0000:00:02.0")
    assert entry["SYSLOG_IDENTIFIER"] == "gvtd"
    assert isinstance(logging.getLogger().handlers[0], logging.StreamHandler)


def test_watchdog_pings_from_the_loop(tmp_path: Path) -> None:
    bus = DBusDaemon()
    notify = NotifySocket(tmp_path)
    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=bus.address, NOTIFY_SOCKET=notify.path,
               WATCHDOG_USEC="200000")
    proc = subprocess.Popen([sys.executable, "-m", "gvtd.daemon", "--session",
                             "--config-dir", str(tmp_path), "--state-dir", str(tmp_path / "s")],
                            env=env, stderr=subprocess.DEVNULL)
    try:
        notify.wait("READY=1")
        assert notify.wait("WATCHDOG=1") and notify.wait("WATCHDOG=1")
        # and not for another process: WATCHDOG_PID names someone else
    finally:
        proc.terminate()
        proc.wait(30)
        bus.stop()
        notify.close()


def test_no_watchdog_for_another_pid(tmp_path: Path) -> None:
    bus = DBusDaemon()
    notify = NotifySocket(tmp_path)
    env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=bus.address, NOTIFY_SOCKET=notify.path,
               WATCHDOG_USEC="1000", WATCHDOG_PID="1")
    proc = subprocess.Popen([sys.executable, "-m", "gvtd.daemon", "--session",
                             "--config-dir", str(tmp_path), "--state-dir", str(tmp_path / "s")],
                            env=env, stderr=subprocess.DEVNULL)
    try:
        notify.wait("READY=1")
        proc.send_signal(signal.SIGTERM)
        notify.wait("STOPPING=1")
        proc.wait(30)
        assert not [m for m in notify.messages if m.startswith("WATCHDOG")]
    finally:
        bus.stop()
        notify.close()

"""Fixtures that run the emulated host in a umockdev-wrapper child, so plain pytest works."""

from __future__ import annotations

import errno
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
REPO = HERE.parent.parent
TIMEOUT = 20.0


class Lines:
    """Lines of a child's stdout, read by a thread so that waits can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        out = proc.stdout
        threading.Thread(target=lambda: [self.q.put(line) for line in out] + [self.q.put(None)],
                         daemon=True).start()

    def next(self, timeout: float = TIMEOUT) -> str:
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from child within {timeout}s") from None
        if line is None:
            raise AssertionError("child exited")
        return line.rstrip("\n")

    def pending(self) -> list[str]:
        """Lines already received, without waiting."""
        out = []
        while not self.q.empty():
            line = self.q.get_nowait()
            if line is not None:
                out.append(line.rstrip("\n"))
        return out


class HostProc:
    """An EmulatedHost in a preloaded child; the test reaches its sysfs by the real path."""

    def __init__(self, profile: str = "default", **params: Any) -> None:
        env = {**os.environ, "PYTHONPATH": f"{REPO}:{HERE}"}
        env.pop("UMOCKDEV_DIR", None)
        self.proc = subprocess.Popen(
            ["umockdev-wrapper", sys.executable, str(HERE / "hostproc.py"), profile, json.dumps(params)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        self.lines = Lines(self.proc)
        hello = json.loads(self.lines.next())
        self.root: str = hello["root"]
        self.preload: str = hello["preload"]

    def sys(self, path: str = "") -> Path:
        """The real path of ``/sys/<path>`` inside the testbed."""
        return Path(self.root, "sys", path.lstrip("/").removeprefix("sys/"))

    def call(self, method: str, *args: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([method, *args]) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.lines.next())
        if "errno" in reply:
            code = getattr(errno, reply["errno"])
            raise OSError(code, os.strerror(code))
        assert "ok" in reply, reply
        return reply["ok"]

    def child_env(self) -> dict[str, str]:
        return {**os.environ, "LD_PRELOAD": self.preload, "UMOCKDEV_DIR": self.root}

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert not os.path.exists(self.root), "testbed left behind"


class Monitor:
    """A pyudev netlink monitor in a child that sees the host's testbed."""

    def __init__(self, host: HostProc) -> None:
        env = {**host.child_env(), "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, str(HERE / "monitor.py")],
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.lines = Lines(self.proc)
        assert self.lines.next() == "ready"

    def events(self, n: int) -> list[dict[str, Any]]:
        return [json.loads(self.lines.next()) for _ in range(n)]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def write(path: Path | str, data: str) -> str:
    """Write like ``echo`` does (one write call); "ok" or the errno's name."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        return errno.errorcode[e.errno]
    try:
        os.write(fd, data.encode())
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
    finally:
        os.close(fd)


@pytest.fixture
def make_host() -> Iterator[Callable[..., HostProc]]:
    hosts: list[HostProc] = []

    def make(profile: str = "default", **params: Any) -> HostProc:
        hosts.append(HostProc(profile, **params))
        return hosts[-1]

    yield make
    for h in hosts:
        h.close()


@pytest.fixture
def host(make_host: Callable[..., HostProc]) -> HostProc:
    return make_host()


@pytest.fixture
def monitor(host: HostProc) -> Iterator[Monitor]:
    m = Monitor(host)
    yield m
    m.close()

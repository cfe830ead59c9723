"""Tools over an emulated sysfs: a private mount namespace in which a tree is /sys.

mdevctl, systemd-tmpfiles and driverctl read and write /sys (and their configuration) at
fixed paths, and systemd-tmpfiles walks a path one component at a time from a descriptor
of `/` (openat with O_NOFOLLOW), which umockdev's preload, redirecting absolute paths only,
does not follow. So a helper process started with `unshare -m` bind-mounts the simulator's
tree (recursively: the kernel's part is a FUSE mount below sys/devices) over /sys, adds a
tool's own mounts (a scratch directory over /etc/mdevctl.d), then runs the commands it is
sent and times each one itself, from fork to exit, as the benchmark times gvt-client from
its own process. Nothing outside the namespace changes.

    helper:  unshare -m python3 bench/mdevns.py --serve SYS_TREE MOUNTS_JSON < ENV_JSON, ARGVS...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Run:
    """One command run inside the namespace."""

    argv: list[str]
    ms: float
    returncode: int
    stdout: str
    stderr: str


class SysNamespace:
    """A helper process in its own mount namespace where `sys_tree` is /sys, after which
    each of `mounts` (mount(8) arguments) is mounted; `run` executes commands there, with
    `env` (default: this process's, without umockdev's preload) as their environment."""

    def __init__(self, sys_tree: str | Path, mounts: Sequence[Sequence[str]] = (),
                 env: dict[str, str] | None = None) -> None:
        plain = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "UMOCKDEV_DIR")}
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", sys.executable, __file__, "--serve",
             str(sys_tree), json.dumps([list(m) for m in mounts])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=plain)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(env or plain) + "\n")  # not on a command line
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.proc.wait(10)
            raise RuntimeError(f"the namespace over {sys_tree} did not come up: "
                               f"{line.strip()} {err}")

    def run(self, *argvs: list[str]) -> list[Run]:
        """Run each argv in turn inside the namespace."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([list(a) for a in argvs]) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError("the namespace helper died")
        return [Run(**r) for r in json.loads(reply)]

    def check(self, argv: list[str]) -> Run:
        """Run one command that must succeed."""
        r = self.run(argv)[0]
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def close(self) -> None:
        """End the helper: its mounts go with the namespace (before the FUSE server stops)."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(30)

    def __enter__(self) -> "SysNamespace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MdevctlNamespace(SysNamespace):
    """mdevctl's namespace: `etc_dir` is its /etc/mdevctl.d."""

    def __init__(self, sys_tree: str | Path, etc_dir: str | Path) -> None:
        Path(etc_dir, "scripts.d", "callouts").mkdir(parents=True, exist_ok=True)
        Path(etc_dir, "scripts.d", "notifiers").mkdir(parents=True, exist_ok=True)
        super().__init__(sys_tree, [["--bind", str(etc_dir), "/etc/mdevctl.d"]])


def _serve(sys_tree: str, mounts: list[list[str]]) -> int:
    """Inside the new namespace: mount, then run what arrives on stdin (its first line: the
    commands' environment)."""
    env = json.loads(sys.stdin.readline())
    for argv in [["mount", "--rbind", sys_tree, "/sys"]] + [["mount", *m] for m in mounts]:
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode:
            print(f"{' '.join(argv)}: {r.stderr.strip()}", flush=True)
            return 1
    print("ready", flush=True)
    for line in sys.stdin:
        out = []
        for argv in json.loads(line):
            t = time.perf_counter()
            r = subprocess.run(argv, capture_output=True, text=True, env=env)
            ms = (time.perf_counter() - t) * 1000
            out.append(dict(argv=argv, ms=ms, returncode=r.returncode, stdout=r.stdout,
                            stderr=r.stderr))
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        sys.exit(_serve(sys.argv[2], json.loads(sys.argv[3])))
    print(__doc__, file=sys.stderr)
    sys.exit(2)

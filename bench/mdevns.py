"""mdevctl over an emulated sysfs: a private mount namespace in which a tree is /sys.

mdevctl reads /sys and /etc/mdevctl.d at fixed paths, so a helper process started with
`unshare -m` bind-mounts the simulator's tree (recursively: the kernel's part is a FUSE
mount below sys/devices) over /sys and a scratch directory over /etc/mdevctl.d, then runs
the commands it is sent and times each one itself, from fork to exit, as the benchmark
times gvt-client from its own process. Nothing outside the namespace changes.

    helper:  unshare -m python3 bench/mdevns.py --serve SYS_TREE ETC_DIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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


class MdevctlNamespace:
    """A helper process in its own mount namespace; `run` executes commands there."""

    def __init__(self, sys_tree: str | Path, etc_dir: str | Path) -> None:
        Path(etc_dir, "scripts.d", "callouts").mkdir(parents=True, exist_ok=True)
        Path(etc_dir, "scripts.d", "notifiers").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "UMOCKDEV_DIR")}
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", sys.executable, __file__, "--serve",
             str(sys_tree), str(etc_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.proc.wait(10)
            raise RuntimeError(f"the mdevctl namespace did not come up: {line.strip()} {err}")

    def run(self, *argvs: list[str]) -> list[Run]:
        """Run each argv in turn inside the namespace."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([list(a) for a in argvs]) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError("the mdevctl namespace helper died")
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

    def __enter__(self) -> "MdevctlNamespace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(sys_tree: str, etc_dir: str) -> int:
    """Inside the new namespace: mount, then run what arrives on stdin."""
    for argv in (["mount", "--rbind", sys_tree, "/sys"],
                 ["mount", "--bind", etc_dir, "/etc/mdevctl.d"]):
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode:
            print(f"{' '.join(argv)}: {r.stderr.strip()}", flush=True)
            return 1
    print("ready", flush=True)
    for line in sys.stdin:
        out = []
        for argv in json.loads(line):
            t = time.perf_counter()
            r = subprocess.run(argv, capture_output=True, text=True)
            ms = (time.perf_counter() - t) * 1000
            out.append(dict(argv=argv, ms=ms, returncode=r.returncode, stdout=r.stdout,
                            stderr=r.stderr))
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        sys.exit(_serve(sys.argv[2], sys.argv[3]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)

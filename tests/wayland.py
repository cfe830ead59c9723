"""A Wayland desktop for tests: weston's headless backend with Xwayland, run as the session's
user in its own runtime directory, as a Wayland login runs its compositor.

weston logs "xserver listening on display :N" once Xwayland's sockets exist (Xwayland itself
starts at the first X client), so starting one waits on that line of its log, not on a
timer. The X socket in /tmp/.X11-unix is then the user's: what gvtd looks for on Wayland.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

LISTENING = re.compile(r"xserver listening on display (:\d+)")


class Weston:
    def __init__(self, uid: int, gid: int, runtime_dir: Path, xwayland: bool = True) -> None:
        self.runtime_dir = runtime_dir
        self.socket = "wayland-gvtd"
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "weston",
               "--backend=headless-backend.so", f"--socket={self.socket}", "--idle-time=0",
               *(["--xwayland"] if xwayland else [])]
        env = {"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime_dir), "HOME": "/"}
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.display = ""
        self.log: list[str] = []
        assert self.proc.stderr is not None
        wanted = LISTENING if xwayland else re.compile(r"launching '.*weston-desktop-shell'")
        for line in self.proc.stderr:
            self.log.append(line)
            found = wanted.search(line)
            if found:
                self.display = found.group(1) if xwayland else ""
                break
        else:
            raise RuntimeError(f"weston exited ({self.proc.wait()}): {''.join(self.log)[-2000:]}")
        # weston keeps logging; a full pipe would stop it
        self._drain = subprocess.Popen(["cat"], stdin=self.proc.stderr,
                                       stdout=subprocess.DEVNULL)

    @property
    def wayland_display(self) -> str:
        return self.socket

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        self._drain.wait()

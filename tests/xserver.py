"""A private X server (Xvfb) with access control on, as a desktop session has it.

Xvfb picks a free display itself and writes its number to -displayfd once it accepts
connections, so starting one waits on that pipe, not on a timer. The session's cookie is in
an authority file only the test (the "desktop user") has; everyone else gets in only through
the server's access list (xhost).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path


class Xvfb:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gvtd-xvfb-"))
        self.server_auth = self.dir / "server.auth"
        self.auth = self.dir / "Xauthority"
        cookie = subprocess.run(["mcookie"], capture_output=True, text=True,
                                check=True).stdout.strip()
        # The server loads every cookie of its -auth file, whatever display it names.
        subprocess.run(["xauth", "-f", str(self.server_auth), "add", ":0", ".", cookie],
                       check=True, capture_output=True)
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            # -noreset: a desktop's X server has clients all along; without them Xvfb would
            # reset its access list each time the last one (an xhost) disconnects
            ["Xvfb", "-displayfd", str(w), "-auth", str(self.server_auth), "-nolisten", "tcp",
             "-noreset", "-screen", "0", "640x480x24"], pass_fds=(w,), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(w)
        with os.fdopen(r) as f:
            number = f.readline().strip()
        if not number:
            raise RuntimeError(f"Xvfb exited with status {self.proc.wait()} before it was ready")
        self.display = f":{number}"
        subprocess.run(["xauth", "-f", str(self.auth), "add", self.display, ".", cookie],
                       check=True, capture_output=True)
        self.env = dict(os.environ, DISPLAY=self.display, XAUTHORITY=str(self.auth))

    def xhost(self, *args: str) -> str:
        """xhost as the desktop user (who has the cookie)."""
        p = subprocess.run(["xhost", *args], env=self.env, capture_output=True, text=True)
        if p.returncode:
            raise AssertionError(f"xhost {' '.join(args)} failed: {p.stderr}")
        return p.stdout

    def reachable_as(self, user: str) -> bool:
        """Whether `user`, with no cookie, can open the display: what QEMU does."""
        return subprocess.run(["runuser", "-u", user, "--", "env", "-i",
                               f"DISPLAY={self.display}", "xdpyinfo"],
                              capture_output=True).returncode == 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)

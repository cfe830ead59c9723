"""Runs an EmulatedHost under umockdev-wrapper for tests that run without the preload.

Prints one JSON line {"root", "preload"} once the host is up, then answers JSON lines
``[method, *args]`` on stdin with {"ok": result} or {"errno": "ENOENT"}; EOF stops it.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import Any

from gvtd.sim.host import EmulatedHost

CALLS = {"register_parent", "unregister_parent", "remove_mdev", "add_foreign_mdev",
         "forget_mdevs", "write_log", "mdevs", "hold_remove", "refuse_removes",
         "wait_stalled", "release_writes", "unbind_driver", "bind_driver", "forget_vfs",
         "pci_devices"}


def main() -> None:
    profile = sys.argv[1] if len(sys.argv) > 1 else "default"
    params: dict[str, Any] = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    with EmulatedHost(profile, **params) as host:
        out = {"root": host.root, "preload": host.child_env()["LD_PRELOAD"]}
        print(json.dumps(out), flush=True)
        for line in sys.stdin:
            method, *args = json.loads(line)
            if method not in CALLS:
                reply: dict[str, Any] = {"error": f"unknown {method}"}
            else:
                try:
                    reply = {"ok": getattr(host, method)(*args)}
                except OSError as e:
                    reply = {"errno": errno.errorcode.get(e.errno or 0, str(e.errno))}
            print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    os.environ.pop("PYTHONWARNINGS", None)
    main()

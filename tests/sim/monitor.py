"""Prints "ready", then each uevent it receives as a JSON line (run with the testbed's env)."""

from __future__ import annotations

import json

import pyudev


def main() -> None:
    monitor = pyudev.Monitor.from_netlink(pyudev.Context())
    monitor.start()
    print("ready", flush=True)
    for dev in iter(monitor.poll, None):
        props = dict(dev.properties)
        print(json.dumps({"action": dev.action, "devpath": dev.device_path,
                          "subsystem": dev.subsystem, "props": props}), flush=True)


if __name__ == "__main__":
    main()

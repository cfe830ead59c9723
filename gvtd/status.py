"""What gvtd shows of its health: Manager.Problems, every part's entries in one order, and
the one-line summary that sd_notify's STATUS and the log's "Ready" line carry."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gvtd.host import Host
from gvtd.observed import ProblemRow


class Status:
    def __init__(self, host: Host, sources: Sequence[Callable[[], list[ProblemRow]]]) -> None:
        """sources: the other parts (domains, suspend, ...) whose entries come after the
        configuration's, each called whenever Problems is read."""
        self.host = host
        self.sources = tuple(sources)

    def problems(self) -> list[ProblemRow]:
        """(id, severity, message, fix) for Manager.Problems."""
        host = self.host
        out = [(f"config:{p.file}", "error", str(p),
                "Fix or remove the file, then run `gvt-client reload`.")
               for p in host.config_problems]
        for source in self.sources:
            out += source()
        out += host.uevents.problems()  # a pass over uevents that failed
        out += list(host.observed.unreadable.values())
        for v in host.views.values():
            if v.state == "failed":
                out.append((f"vgpu:{v.name or v.uuid}", "error",
                            f"vGPU {v.name or v.uuid}: {v.last_error}",
                            "See `gvt-client status` and the journal (journalctl -u gvtd)."))
            elif v.uuid in host.refused and v.state == "active":
                out.append((f"vgpu:{v.name or v.uuid}", "warn",
                            f"vGPU {v.name or v.uuid}: {v.last_error}",
                            "Close what holds it open (a VM outside libvirt, or QEMU still "
                            f"exiting), then `gvt-client remove {v.name or v.uuid}`."))
        return out

    def summary(self) -> str:
        views = self.host.views.values()
        active = [v for v in views if v.state == "active"]
        parents = {v.parent for v in active}
        failed = sum(v.state == "failed" for v in views)
        text = (f"{len(active)} vGPU{'s' if len(active) != 1 else ''} active on "
                f"{len(parents)} parent{'s' if len(parents) != 1 else ''}")
        if failed:
            text += f", {failed} failed"
        files = len({p.file for p in self.host.config_problems})
        if files:
            text += f", {files} invalid config file{'s' if files != 1 else ''}"
        return text

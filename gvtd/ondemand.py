"""The vGPUs of one domain (gvtd.domains says which and when): every one it uses exists
before it starts, and the on-demand ones gvtd created go after it stopped."""

from __future__ import annotations

import logging

from gvtd.errors import GvtdError, NotFound
from gvtd.host import Host, journal_fields

log = logging.getLogger("gvtd.host")  # the lines Host logged before this moved out stay its own


async def ensure(host: Host, uuids: list[str], domain: str) -> None:
    """Every vGPU a domain is about to use exists: create on-demand and missing ones."""
    async with host.lock:
        await host.refresh()
        by_uuid = {d.uuid: n for n, d in host.definitions.items()}
        for uuid in uuids:
            host.not_removing(uuid, by_uuid.get(uuid, ""))
            if uuid in host.mdevs:
                continue
            name = by_uuid.get(uuid)
            if name is None:
                raise NotFound(
                    f"{domain} uses the vGPU {uuid}, which no definition and no mdev has. "
                    f"Define it: gvt-client define NAME --type TYPE --uuid {uuid} "
                    f"--domain {domain}")
            await host.create_now(name)


async def release(host: Host, domain: str, uuids: list[str]) -> None:
    """After a domain stopped: remove the on-demand vGPUs gvtd created for it that no
    running domain uses (running as libvirt's events say, not as a caller claims)."""
    async with host.lock:
        await host.refresh()
        for name, d in sorted(host.definitions.items()):
            if d.start == "on-demand" and d.uuid in uuids and d.uuid in host.mdevs \
                    and host.ownership.removable(d.uuid) \
                    and host.domains.running_user(d.uuid) is None:
                log.info("Domain %s stopped: removing its on-demand vGPU %s", domain, name,
                         extra=journal_fields(name, d.uuid))
                try:
                    await host.remove_owned(d.uuid, name)
                except GvtdError as e:  # shown on the vGPU (LastError) and in Problems
                    host.refused[d.uuid] = f"Not removed after {domain} stopped: {e.message}"
        await host.refresh()
        host.publish()

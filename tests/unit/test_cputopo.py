"""The host's cores and SMT siblings from sysfs trees shaped like real hosts."""

from pathlib import Path

import pytest

from gvtd import cputopo
from gvtd.errors import Failed

# (name, each core's siblings) as the kernel numbers them: Intel laptops list every core's
# first thread before the second threads, so cpu0 pairs with cpu(N/2).
HOSTS = {
    "2-smt": ((0, 1),),
    "2-nosmt": ((0,), (1,)),
    "4-smt": ((0, 2), (1, 3)),
    "4-nosmt": ((0,), (1,), (2,), (3,)),
    "8-smt": ((0, 4), (1, 5), (2, 6), (3, 7)),
    "8-nosmt": tuple((c,) for c in range(8)),
}


def sysfs(tmp: Path, cores: tuple[tuple[int, ...], ...], offline: tuple[int, ...] = (),
          ranges: bool = False) -> Path:
    """A /sys with devices/system/cpu as the kernel lays it out."""
    base = tmp / "devices" / "system" / "cpu"
    for core_id, core in enumerate(cores):
        for cpu in core:
            topo = base / f"cpu{cpu}" / "topology"
            topo.mkdir(parents=True)
            text = f"{core[0]}-{core[-1]}" if ranges and len(core) > 1 and \
                core[-1] - core[0] == len(core) - 1 else ",".join(map(str, core))
            (topo / "thread_siblings_list").write_text(text + "\n")
            (topo / "core_id").write_text(f"{core_id}\n")
            if cpu:  # cpu0 has no online file on x86
                (base / f"cpu{cpu}" / "online").write_text("0\n" if cpu in offline else "1\n")
    (base / "online").write_text(f"0-{sum(map(len, cores)) - 1}\n")  # not a cpuN: ignored
    (base / "cpufreq").mkdir()
    return tmp


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_reads_each_host(tmp_path: Path, host: str) -> None:
    topo = cputopo.read(sysfs(tmp_path, HOSTS[host]))
    assert topo.cores == tuple(sorted(HOSTS[host]))
    assert topo.smt == host.endswith("-smt")
    assert topo.threads == (2 if topo.smt else 1)
    assert topo.cpus == int(host.split("-")[0])


def test_siblings_as_a_range(tmp_path: Path) -> None:
    assert cputopo.read(sysfs(tmp_path, ((0, 1), (2, 3)), ranges=True)).cores \
        == ((0, 1), (2, 3))


def test_usable_leaves_cpu0s_core_to_the_host(tmp_path: Path) -> None:
    topo = cputopo.read(sysfs(tmp_path, HOSTS["8-smt"]))
    assert topo.usable(first_core=False) == ((1, 5), (2, 6), (3, 7))
    assert topo.usable(first_core=True)[0] == (0, 4)
    nosmt = cputopo.Topology(HOSTS["4-nosmt"])
    assert nosmt.usable(False) == ((1,), (2,), (3,))


def test_offline_cpus_are_left_out(tmp_path: Path) -> None:
    topo = cputopo.read(sysfs(tmp_path, HOSTS["4-nosmt"], offline=(3,)))
    assert topo.cores == ((0,), (1,), (2,))


def test_parse_cpu_list() -> None:
    assert cputopo.parse_cpu_list("0-3,8-11\n") == (0, 1, 2, 3, 8, 9, 10, 11)
    assert cputopo.parse_cpu_list("4,0") == (0, 4)


def test_no_topology_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(Failed, match="--no-cpu"):
        cputopo.read(tmp_path)

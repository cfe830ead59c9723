"""Run every benchmark in bench/ (`make bench`): one table, written to docs/benchmarks.md with
the machine's description.

    .venv/bin/python bench/run.py            # full: a few minutes plus the 30 min soak;
                                             # writes docs/benchmarks.md
    .venv/bin/python bench/run.py --quick    # seconds: every figure, few rounds (make test)
        [--only NAME ...] [--out FILE.md] [--json FILE.json]

The quick mode measures every figure with few samples, so that a benchmark that no longer
runs is noticed by the tests; its numbers mean little and are not written to the docs
unless --out asks for it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dbus_calls  # noqa: E402
import events  # noqa: E402
import kernel_log  # noqa: E402
import libvirt_start  # noqa: E402
import mdevctl  # noqa: E402
import profiles  # noqa: E402
import soak  # noqa: E402
import sriov  # noqa: E402
import startup  # noqa: E402
from common import ROOT, Section, machine, markdown_table, rows, text_table  # noqa: E402

# name -> (full run, quick run)
BENCHMARKS: dict[str, tuple[Callable[[], Section], Callable[[], Section]]] = {
    "startup": (lambda: startup.measure(15), lambda: startup.measure(2)),
    "events": (lambda: events.measure(50, 60.0), lambda: events.measure(3, 0.5)),
    "mdevctl": (lambda: mdevctl.measure(False), lambda: mdevctl.measure(True)),
    "dbus": (lambda: dbus_calls.measure(False), lambda: dbus_calls.measure(True)),
    "profile": (lambda: profiles.measure(False), lambda: profiles.measure(True)),
    "soak": (lambda: soak.measure(1800.0), lambda: soak.measure(10.0)),
    "libvirt": (lambda: libvirt_start.measure(15), lambda: libvirt_start.measure(2)),
    "kernel-log": (lambda: kernel_log.measure(30, 10_000), lambda: kernel_log.measure(3, 500)),
    "sriov": (lambda: sriov.measure(15), lambda: sriov.measure(2)),
}

DOC_INTRO = """\
# Benchmarks

Written by `make bench` (`bench/run.py`); every figure below comes from one run on the
machine described at the end. Each benchmark starts `gvtd --simulate` on a private bus: the
production daemon over the emulated kernel (docs/simulation.md). Baselines are measured the
same way in the same run, so the ratio column survives a slower machine; `-` in p95/p99
means too few samples for a tail. Times are wall-clock milliseconds unless the unit says
otherwise.

Every sysfs file operation on the emulated host goes through FUSE and Python (about 1 ms
each, where a real sysfs takes microseconds), so timings of anything that reads or writes
sysfs are upper bounds; the "plain copy" rows measure the same reads over an ordinary copy
of the tree to show how much of a figure is the emulator.
"""


def to_json(sections: list[Section]) -> list[dict[str, object]]:
    out = []
    for s in sections:
        figs = []
        for f in s.figures:
            figs.append(dict(name=f.name, unit=f.unit, n=len(f.samples), median=f.median,
                             p95=f.pct(95), p99=f.pct(99), min=min(f.samples),
                             max=max(f.samples), ratio=f.ratio,
                             baseline=f.baseline.name if f.baseline else None,
                             goal=f.goal, met=f.met, row=rows(f)))
        out.append(dict(title=s.title, figures=figs, notes=s.notes))
    return out


def markdown(sections: list[Section], findings: str, seconds: float, quick: bool) -> str:
    parts = [DOC_INTRO]
    if quick:
        parts.append("**Quick mode**: few samples per figure; for the record, not for claims.\n")
    parts.append("## Results\n")
    for s in sections:
        parts.append(f"### {s.title}\n\n{markdown_table(s.figures)}\n")
        if s.notes:
            parts.append("\n".join(f"- {n}" if not n.startswith("  ") else f"    {n.strip()}"
                                   for n in s.notes) + "\n")
    if findings:
        parts.append(findings)
    parts.append("## Machine\n\n| | |\n|---|---|\n" + "".join(
        f"| {k} | {v} |\n" for k, v in machine().items())
        + f"| run time | {seconds:.0f} s |\n")
    return "\n".join(parts)


def refresh_findings(doc: Path) -> int:
    text = doc.read_text()
    head, rest = text.split("## Findings\n", 1)
    machine_part = rest[rest.index("## Machine\n"):]
    findings = (Path(__file__).resolve().parent / "findings.md").read_text()
    doc.write_text(head + findings + "\n" + machine_part)
    print(f"wrote {doc}", file=sys.stderr)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few rounds: seconds, not minutes")
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    ap.add_argument("--out", type=Path, help="markdown report (full run default: "
                    "docs/benchmarks.md)")
    ap.add_argument("--json", type=Path, help="every figure as JSON, for the tests")
    ap.add_argument("--refresh-findings", action="store_true",
                    help="measure nothing: put bench/findings.md, as edited since the last "
                    "run, into docs/benchmarks.md between that run's results and machine")
    args = ap.parse_args()
    if args.refresh_findings:
        return refresh_findings(args.out or ROOT / "docs" / "benchmarks.md")
    out = args.out or (None if args.quick else ROOT / "docs" / "benchmarks.md")
    started = time.monotonic()
    sections = []
    for name, (full, quick) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        sections.append((quick if args.quick else full)())
    seconds = time.monotonic() - started
    print(text_table(sections))
    for s in sections:
        for n in s.notes:
            print(n)
    bad = [f"{s.title}: {f.name}" for s in sections for f in s.figures
           if not f.samples or any(math.isnan(x) for x in f.samples)]
    bad += [n for s in sections for n in s.notes if n.startswith("UNEXPECTED")]
    if args.json:
        args.json.write_text(json.dumps(to_json(sections), indent=1))
    if out is not None:
        findings_file = Path(__file__).resolve().parent / "findings.md"
        findings = findings_file.read_text() if findings_file.exists() else ""
        out.write_text(markdown(sections, findings, seconds, args.quick))
        print(f"wrote {out}", file=sys.stderr)
    if bad:
        print("figures without samples, or unexpected errors: " + ", ".join(bad),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

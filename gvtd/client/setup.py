"""`gvt-client setup`: the kernel command line and the modules GVT-g needs, through the
host's own boot tooling (gvtd/bootcfg.py decides what), written atomically and undone
exactly by `--revert`.

It runs in the client, as root, and never in the daemon: every local user may call gvtd,
and none of them may have the boot configuration changed through it. What setup wrote is
recorded in STATE (each file's bytes before and after) before anything is written, so that
--revert restores byte for byte, even after a crash half way.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from gvtd import bootcfg, doctor
from gvtd.config import TEMPORARY_RE, atomic_write, fsync_dir

STATE = "/var/lib/gvtd/setup.json"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


class SetupError(Exception):
    """Setup cannot go on; the text says why and what to do (exit status 1)."""


def run_command(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """A boot tool, with the administrator's PATH (sudo's secure_path has the sbin ones)."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, PATH=PATH))
    except FileNotFoundError as e:
        return subprocess.CompletedProcess(argv, 127, "", f"{e.filename}: not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", "did not finish within 600 s")


@dataclass
class Record:
    """What setup changed: each file's bytes before it and what it wrote (None: absent),
    the directories it created, and the commands that make the boot loader follow a revert."""

    tool: str = ""
    files: dict[str, tuple[bytes | None, bytes | None]] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    revert_commands: list[list[str]] = field(default_factory=list)

    def to_json(self) -> str:
        def enc(b: bytes | None) -> str | None:
            return None if b is None else base64.b64encode(b).decode()
        return json.dumps({"tool": self.tool,
                           "files": {p: {"before": enc(a), "after": enc(b)}
                                     for p, (a, b) in self.files.items()},
                           "dirs": self.dirs, "revert_commands": self.revert_commands},
                          indent=2) + "\n"

    @classmethod
    def load(cls, root: bootcfg.Root) -> Record | None:
        data = root.read(STATE)
        if data is None:
            return None

        def dec(v: str | None) -> bytes | None:
            return None if v is None else base64.b64decode(v, validate=True)
        try:
            raw = json.loads(data)
            return cls(raw["tool"], {p: (dec(f["before"]), dec(f["after"]))
                                     for p, f in raw["files"].items()},
                       list(raw["dirs"]), [list(c) for c in raw["revert_commands"]])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SetupError(f"{root.file(STATE)} is not the record setup writes ({e}), so "
                             "setup cannot tell what it changed. Restore it from a backup, "
                             "or undo the changes by hand and remove it.") from None


def _diff(path: str, now: bytes | None, then: bytes | None) -> str:
    lines = difflib.unified_diff(
        bootcfg.as_text(now).splitlines(True), bootcfg.as_text(then).splitlines(True),
        "/dev/null" if now is None else path, "/dev/null" if then is None else path)
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines)


def _shown(root: bootcfg.Root, argv: list[str]) -> str:
    return shlex.join(root.command(argv))


def _write(root: bootcfg.Root, path: str, data: bytes | None) -> None:
    """One file, atomically: the old content or the new one, never half of either."""
    target = root.file(path)
    if data is None:
        try:
            target.unlink()
            fsync_dir(target.parent)
        except FileNotFoundError:
            pass
        return
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
    atomic_write(target, data, mode)


def _missing(root: bootcfg.Root, directory: Path) -> list[str]:
    """directory and those of its parents that do not exist yet, outermost first."""
    missing = []
    while not directory.exists():
        missing.append("/" + str(directory.relative_to(root.path)))
        directory = directory.parent
    return missing[::-1]


def _mkdirs(root: bootcfg.Root, directory: Path, created: list[str]) -> None:
    """directory and its missing parents, each named in created (as in the root)."""
    for d in _missing(root, directory):
        root.file(d).mkdir()
        created.append(d)


def _remove_litter(root: bootcfg.Root, paths: list[str]) -> None:
    """The temporary files an interrupted atomic_write of these paths left beside them."""
    for path in paths:
        target = root.file(path)
        try:
            entries = os.listdir(target.parent)
        except OSError:
            continue
        for entry in entries:
            if entry.startswith(f".{target.name}.") and TEMPORARY_RE.fullmatch(entry):
                (target.parent / entry).unlink(missing_ok=True)


def _rmdirs(root: bootcfg.Root, dirs: list[str]) -> None:
    """The directories setup created, deepest first, where they are empty again."""
    for d in sorted(dirs, key=len, reverse=True):
        try:
            root.file(d).rmdir()
        except OSError:
            pass  # something else lives there now: it stays


def _show_commands(root: bootcfg.Root, commands: list[list[str]], dry_run: bool,
                   out: TextIO) -> None:
    if commands:
        print("then it would run:" if dry_run else "then it runs:", file=out)
        for argv in commands:
            print(f"  {_shown(root, argv)}", file=out)


def _run_all(root: bootcfg.Root, commands: list[list[str]], run: Runner,
             out: TextIO) -> None:
    for argv in commands:
        print(f"running {_shown(root, argv)}", file=out, flush=True)
        p = run(root.command(argv))
        if p.returncode != 0:
            tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-5:])
            raise SetupError(f"`{_shown(root, argv)}` failed (exit status {p.returncode}): "
                             f"{tail}")


def _read(root: bootcfg.Root, run: Runner) -> bootcfg.Reader:
    def read(argv: list[str]) -> str:
        p = run(root.command(argv))
        if p.returncode != 0:
            raise SetupError(f"`{_shown(root, argv)}` failed (exit status {p.returncode}): "
                             f"{p.stderr.strip()}")
        return p.stdout
    return read


def _expectation(plan: bootcfg.Plan) -> str:
    ok = {c.id for c in doctor.check_cmdline(plan.next_cmdline) if c.severity == "pass"} \
        if plan.next_cmdline is not None else set()
    passing = [check_id for check_id, _ in doctor.REQUIRED_CMDLINE if check_id in ok]
    passing += [m.check_id for m in doctor.REQUIRED_MODULES]  # setup configures them all
    return ("A reboot is needed for it to take effect. After it, `gvt-client doctor` shows "
            + (", ".join(passing) if passing else "the command-line checks")
            + " as ok; i915.enable_gvt and mdev_types then say whether GVT-g started.")


def refuse_sriov_host(root: bootcfg.Root) -> None:
    """Setup knows GVT-g's command line only, whose i915.enable_guc=0 would turn off the
    GuC submission an SR-IOV GPU's driver needs: it changes nothing on such a host."""
    from gvtd import doctor_sriov

    gpu = doctor.find_gpu(root.file("/sys"))
    if gpu is not None and doctor_sriov.is_sriov_host(gpu):
        raise SetupError(f"{gpu.address} is an SR-IOV GPU (Tiger Lake or newer), not a GVT-g "
                         "one: setup writes GVT-g's kernel command line (i915.enable_gvt=1 "
                         "i915.enable_guc=0), whose enable_guc=0 would turn off the GuC "
                         "submission its SR-IOV driver needs, so it changes nothing here. "
                         "`gvt-client doctor` lists what this host needs (its sriov.* "
                         "findings), each with the change to make by hand.")


def setup(root: bootcfg.Root, dry_run: bool, out: TextIO, run: Runner = run_command,
          procfs: Path | None = None) -> int:
    """Plan, show, and (unless dry_run) apply; the exit status."""
    refuse_sriov_host(root)
    if not dry_run and os.geteuid() != 0:
        raise SetupError("Changing the boot configuration needs root: run `sudo gvt-client "
                         "setup` (`gvt-client setup --dry-run` shows what it would change).")
    record = Record.load(root) or Record()
    if not dry_run:
        _remove_litter(root, [STATE, *record.files])

    def base(path: str) -> bytes | None:
        """The file as it was before setup, while setup's own content is still there."""
        if path in record.files and root.read(path) == record.files[path][1]:
            return record.files[path][0]
        return root.read(path)

    procfs = procfs or root.file("/proc")
    plan = bootcfg.plan(root, base, procfs, _read(root, run))
    _show(root, plan, procfs, dry_run, out)
    status = 1 if plan.manual else 0  # the command line is left to the person
    if not plan.changes and not plan.commands:
        if not plan.manual:
            print("Nothing to change: the next boot already gets what GVT-g needs here.",
                  file=out)
        return status
    if dry_run:
        print("Dry run: nothing was changed; `sudo gvt-client setup` applies it.", file=out)
    else:
        _apply(root, record, base, plan, run, out)
    if plan.manual:
        if not dry_run:
            print(f"The kernel command line is left to you: {plan.manual}", file=out)
    else:
        print(_expectation(plan), file=out)
        if not dry_run:
            print("`sudo gvt-client setup --revert` undoes it.", file=out)
    return status


def _show(root: bootcfg.Root, plan: bootcfg.Plan, procfs: Path, dry_run: bool,
          out: TextIO) -> None:
    """How the host boots, what its kernel runs with now, the diffs, the commands, notes."""
    print(plan.how, file=out)
    current = bootcfg.proc_cmdline(procfs)
    if current is not None:
        failing = [c.id for c in doctor.check_cmdline(current) if c.severity != "pass"]
        print(f"The running kernel's command line ({procfs / 'cmdline'}) "
              + (f"fails doctor's {', '.join(failing)}." if failing
                 else "passes doctor's command-line checks."), file=out)
    for c in plan.changes:
        print(_diff(c.path, c.now, c.then), end="", file=out)
    _show_commands(root, plan.commands, dry_run, out)
    for note in plan.notes:
        print(f"note: {note}", file=out)
    if plan.manual:
        print(f"To do by hand: {plan.manual}", file=out)


def _apply(root: bootcfg.Root, record: Record, base: bootcfg.Base, plan: bootcfg.Plan,
           run: Runner, out: TextIO) -> None:
    """Record, write, run; on any failure every file goes back and so does the record."""
    before = Record(record.tool, dict(record.files), list(record.dirs),
                    list(record.revert_commands))
    record.tool = plan.tool
    for c in plan.changes:
        original = base(c.path) if c.path in record.files else c.now
        record.files[c.path] = (original, c.then)
        if c.then is not None:
            record.dirs += [d for d in _missing(root, root.file(c.path).parent)
                            if d not in record.dirs]
    if plan.revert_commands:
        record.revert_commands = plan.revert_commands
    done: list[bootcfg.Change] = []
    try:
        # The record first, with every directory setup is about to create: a crash at any
        # later point leaves each file whole, old or new, and --revert knows which.
        _save(root, record)
        for c in plan.changes:
            if c.then is not None:
                root.file(c.path).parent.mkdir(parents=True, exist_ok=True)
            _write(root, c.path, c.then)
            done.append(c)
        _run_all(root, plan.commands, run, out)
    except (OSError, SetupError) as e:
        for c in reversed(done):
            _write(root, c.path, c.now)
        _save(root, before)
        _rmdirs(root, [d for d in record.dirs if d not in before.dirs])
        why = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) else str(e)
        raise SetupError(f"{why.rstrip('.')}. Setup put every file back as it was.") from None
    for c in plan.changes:
        print(f"{'removed' if c.then is None else 'wrote'} {c.path}", file=out)


def _save(root: bootcfg.Root, record: Record) -> None:
    path = root.file(STATE)
    if not record.files and not record.revert_commands:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return
    _mkdirs(root, path.parent, record.dirs)
    atomic_write(path, record.to_json(), 0o600)


def revert(root: bootcfg.Root, dry_run: bool, out: TextIO, run: Runner = run_command) -> int:
    """Put back every file setup changed, byte for byte, and let the boot loader follow."""
    if not dry_run and os.geteuid() != 0:
        raise SetupError("Changing the boot configuration needs root: run `sudo gvt-client "
                         "setup --revert`.")
    record = Record.load(root)
    if record is None:
        if not dry_run:
            _remove_litter(root, [STATE])  # a first setup killed before its record was whole
        print(f"Nothing to revert: setup has not changed this system (no {STATE}).",
              file=out)
        return 0
    if not dry_run:
        _remove_litter(root, [STATE, *record.files])
    restores, changed = [], []
    for path, (before, after) in record.files.items():
        now = root.read(path)
        if now == after and now != before:
            restores.append(bootcfg.Change(path, now, before))
        elif now != before:
            changed.append(path)
    if changed:
        raise SetupError(f"{', '.join(changed)} changed since setup wrote "
                         f"{'it' if len(changed) == 1 else 'them'}, so setup does not know "
                         f"what to put back; {root.file(STATE)} holds the content from "
                         "before setup (base64, \"before\"): restore it by hand. Nothing was "
                         "changed.")
    for c in restores:
        print(_diff(c.path, c.now, c.then), end="", file=out)
    _show_commands(root, record.revert_commands, dry_run, out)
    if dry_run:
        print("Dry run: nothing was changed; `sudo gvt-client setup --revert` does it.",
              file=out)
        return 0
    for c in restores:
        try:
            _write(root, c.path, c.then)
        except OSError as e:
            raise SetupError(f"Cannot restore {c.path}: {e.strerror}. The files before it "
                             "are restored; run `sudo gvt-client setup --revert` again once "
                             "it can be written.") from None
        print(f"{'removed' if c.then is None else 'restored'} {c.path}", file=out)
    _run_all(root, record.revert_commands, run, out)
    root.file(STATE).unlink()
    fsync_dir(root.file(STATE).parent)
    _rmdirs(root, record.dirs)
    print("Reverted: the boot configuration is as it was before setup. Reboot for the "
          "kernel to follow.", file=out)
    return 0

"""mdevctl's definition files: what import-mdevctl refuses to guess about, and writing them
without clobbering another definition."""

import errno
import json
import os
import tempfile
from pathlib import Path

import pytest

from gvtd.client.mdevctl import Entry, MdevctlError, file_text, read_dir, write_dir

GPU = "0000:00:02.0"
U1 = "1b0c4d2e-6f3a-4b5c-8d7e-9f0a1b2c3d4e"
U2 = "2c1d5e3f-7a4b-4c6d-9e8f-0a1b2c3d4e5f"


def put(top: Path, parent: str, name: str, data: object) -> None:
    (top / parent).mkdir(parents=True, exist_ok=True)
    (top / parent / name).write_text(data if isinstance(data, str) else json.dumps(data))


def test_reads_definitions_and_skips_scripts(tmp_path: Path) -> None:
    (tmp_path / "scripts.d" / "callouts").mkdir(parents=True)
    put(tmp_path, GPU, U2.upper(), {"mdev_type": "t", "start": "auto",
                                    "attrs": [{"b": "1"}, {"a": "2"}]})
    put(tmp_path, GPU, U1, {"mdev_type": "t"})
    assert read_dir(tmp_path) == [Entry(U1, GPU, "t", "manual"),
                                  Entry(U2, GPU, "t", "auto", (("b", "1"), ("a", "2")))]


@pytest.mark.parametrize("parent, name, data, says", [
    (GPU, "notes.txt", "{}", "not a UUID"),
    (GPU, U1, "[1]", "a JSON object"),
    (GPU, U1, {"start": "auto"}, "no \"mdev_type\""),
    (GPU, U1, {"mdev_type": "t", "start": "boot"}, "auto or manual"),
    (GPU, U1, {"mdev_type": "t", "attrs": [{"a": "1", "b": "2"}]}, "--addattr"),
    (GPU, U1, {"mdev_type": "t", "attrs": {"a": "1"}}, "--addattr"),
    (GPU, U1, {"mdev_type": "t", "parent": "x"}, "no place for: parent"),
])
def test_refuses_what_it_cannot_carry_over(tmp_path: Path, parent: str, name: str,
                                           data: object, says: str) -> None:
    put(tmp_path, parent, name, data)
    with pytest.raises(MdevctlError, match=says):
        read_dir(tmp_path)


def test_one_uuid_under_two_parents_is_refused(tmp_path: Path) -> None:
    put(tmp_path, GPU, U1, {"mdev_type": "t"})
    put(tmp_path, "mtty", U1, {"mdev_type": "t"})
    with pytest.raises(MdevctlError, match="under both"):
        read_dir(tmp_path)


def test_write_checks_every_file_before_writing_any(tmp_path: Path) -> None:
    a, b = Entry(U1, GPU, "t", "manual"), Entry(U2, GPU, "t", "auto", (("x", "1"),))
    assert write_dir(tmp_path, [a]) == [tmp_path / GPU / U1]
    assert write_dir(tmp_path, [a]) == []  # already there, same content
    assert read_dir(tmp_path) == [a]
    other = Entry(U1, GPU, "u", "manual")
    with pytest.raises(MdevctlError, match="already exists"):
        write_dir(tmp_path, [b, other])
    assert not (tmp_path / GPU / U2).exists()
    assert (tmp_path / GPU / U1).read_text() == file_text(a)


def test_write_never_replaces_a_file_that_appears_while_exporting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mdevctl (or a person) writes a definition of the same UUID after the export looked:
    theirs stays, the error names it and what to do, and no temporary file is left."""
    a, b = Entry(U1, GPU, "t", "manual"), Entry(U2, GPU, "t", "auto")
    real_mkstemp = tempfile.mkstemp
    theirs = '{"mdev_type": "other", "start": "auto"}'

    def someone_defines_u2_meanwhile(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real_mkstemp(*args, **kwargs)
        if os.path.basename(out[1]).startswith(f".{U2}."):
            (tmp_path / GPU / U2).write_text(theirs)
        return out

    monkeypatch.setattr(tempfile, "mkstemp", someone_defines_u2_meanwhile)
    with pytest.raises(MdevctlError) as e:
        write_dir(tmp_path, [a, b])
    assert str(e.value) == (f"{tmp_path / GPU / U2} already exists with another definition; "
                            f"written before it: {tmp_path / GPU / U1}. Remove it (mdevctl "
                            f"undefine --uuid {U2}) or export to another --dir.")
    assert (tmp_path / GPU / U2).read_text() == theirs
    assert sorted(os.listdir(tmp_path / GPU)) == sorted([U1, U2])


def test_write_that_fails_leaves_no_temporary_file(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int, mode: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fchmod", no_space)
    with pytest.raises(MdevctlError, match="No space left on device; nothing was written"):
        write_dir(tmp_path, [Entry(U1, GPU, "t", "manual")])
    assert os.listdir(tmp_path / GPU) == []

"""Configuration models, file loading and atomic writes."""

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from gvtd.config import ConfigDir, Definition, Settings, atomic_write, request_error, validate_name
from gvtd.errors import Busy, Failed, InvalidArgument

UUID = "fff6f017-3417-4ad3-b05e-17ae3e1a4615"


def test_definition_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = ConfigDir(tmp_path)
    d = Definition(uuid=UUID, type="i915-GVTg_V5_4", domain="win10", start="on-demand",
                   attrs=[("a", "1"), ("b", "2")])
    cfg.save_definition("win10", d)
    defs, problems = cfg.load_definitions()
    assert problems == []
    assert defs == {"win10": d}
    assert defs["win10"].attrs == [("a", "1"), ("b", "2")]  # order kept


@pytest.mark.parametrize("data, field", [
    ({"uuid": UUID.upper(), "type": "i915-GVTg_V5_4"}, "uuid"),
    ({"uuid": "not-a-uuid", "type": "i915-GVTg_V5_4"}, "uuid"),
    ({"uuid": UUID, "type": "../../x"}, "type"),
    ({"uuid": UUID, "type": "i915/GVTg"}, "type"),
    ({"uuid": UUID, "type": "a" * 100_000}, "type"),
    ({"uuid": UUID, "type": 4}, "type"),
    ({"uuid": UUID, "min_resolution": "big"}, "min_resolution"),
    ({"uuid": UUID, "type": "x", "start": "always"}, "start"),
    ({"uuid": UUID, "type": "x", "parent": "../.."}, "parent"),
    ({"uuid": UUID, "type": "x", "colour": "red"}, "colour"),
])
def test_bad_definitions_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        Definition.model_validate(data)
    err = request_error(e.value)
    assert isinstance(err, InvalidArgument)
    assert err.message.startswith(field)
    assert len(err.message) < 400  # a 100 kB value is not echoed back


def test_type_or_resolution_exactly_one() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        Definition(uuid=UUID)
    with pytest.raises(ValidationError, match="exactly one"):
        Definition(uuid=UUID, type="x", min_resolution="1920x1080")


def test_a_vf_has_no_attrs() -> None:
    assert Definition(uuid=UUID, type="vf", parent="0000:01:00.0").type == "vf"
    with pytest.raises(ValidationError, match="a VF .* has no sysfs attributes"):
        Definition(uuid=UUID, type="vf", attrs=[("a", "1")])


def test_vf_counts_per_parent(tmp_path: Path) -> None:
    (tmp_path / "gvtd.toml").write_text('sriov_vfs = { "0000:00:02.0" = 7 }\n')
    settings, problems = ConfigDir(tmp_path).load_settings()
    assert settings.sriov_vfs == {"0000:00:02.0": 7} and problems == []
    for bad, field in (('{ "0000:00:02.0" = 0 }', "sriov_vfs.0000:00:02.0"),
                       ('{ "0000:00:02.0" = "7" }', "sriov_vfs.0000:00:02.0"),
                       ('{ "00:02.0" = 7 }', "sriov_vfs.00:02.0.[key]")):
        (tmp_path / "gvtd.toml").write_text(f"sriov_vfs = {bad}\n")
        settings, problems = ConfigDir(tmp_path).load_settings()
        assert settings == Settings() and [p.field for p in problems] == [field], bad


@pytest.mark.parametrize("name", ["a b", "", "../x", ".hidden", "x/y", "a" * 65, "é"])
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match="not a valid vGPU name"):
        validate_name(name)


def test_invalid_file_is_reported_and_others_load(tmp_path: Path) -> None:
    d = tmp_path / "vgpus.d"
    d.mkdir()
    (d / "good.toml").write_text(f'uuid = "{UUID}"\ntype = "i915-GVTg_V5_4"\n')
    (d / "wrongtype.toml").write_text('uuid = "11111111-2222-3333-4444-555555555555"\ntype = 5\n')
    (d / "broken.toml").write_text("uuid = \n")
    (d / "empty.toml").write_text("")
    (d / ".good.toml.abc.tmp").write_text("partial")  # a leftover temporary file
    defs, problems = ConfigDir(tmp_path).load_definitions()
    assert list(defs) == ["good"]
    by_file = {Path(p.file).name: p for p in problems}
    assert set(by_file) == {"wrongtype.toml", "broken.toml", "empty.toml"}
    assert by_file["wrongtype.toml"].field == "type"
    assert "not valid TOML" in by_file["broken.toml"].reason or "cannot be read" in by_file["broken.toml"].reason


def test_duplicate_uuid_across_files(tmp_path: Path) -> None:
    d = tmp_path / "vgpus.d"
    d.mkdir()
    for n in ("a", "b"):
        (d / f"{n}.toml").write_text(f'uuid = "{UUID}"\ntype = "t"\n')
    defs, problems = ConfigDir(tmp_path).load_definitions()
    assert list(defs) == ["a"]
    assert problems[0].field == "uuid" and "already used by a" in problems[0].reason


def test_settings_defaults_and_bad_value(tmp_path: Path) -> None:
    settings, problems = ConfigDir(tmp_path).load_settings()
    assert settings == Settings() and problems == []
    (tmp_path / "gvtd.toml").write_text('log_level = "loud"\n')
    settings, problems = ConfigDir(tmp_path).load_settings()
    assert settings == Settings()
    assert problems[0].field == "log_level"


def test_atomic_write_keeps_old_content_when_write_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "x.toml"
    target.write_text("old")

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["x.toml"]  # no temporary file left behind


def test_save_into_unwritable_dir_is_a_named_error(tmp_path: Path) -> None:
    cfg = ConfigDir(tmp_path / "file-not-dir")
    (tmp_path / "file-not-dir").write_text("")
    with pytest.raises(Failed, match="Nothing was changed"):
        cfg.save_definition("x", Definition(uuid=UUID, type="t"))


def test_load_removes_only_what_an_interrupted_write_left(tmp_path: Path) -> None:
    cfg = ConfigDir(tmp_path)
    cfg.save_definition("a", Definition(uuid=UUID, type="i915-GVTg_V5_4"))
    for name in (".a.toml.k3_9xq0z.tmp", ".b.toml.abcd1234.tmp", ".a.toml.swp", "a.toml~",
                 ".hidden.tmp"):
        (cfg.definitions_dir / name).write_text("x")
    defs, problems = cfg.load_definitions()
    assert list(defs) == ["a"] and problems == []
    assert sorted(os.listdir(cfg.definitions_dir)) == [".a.toml.swp", ".hidden.tmp",
                                                        "a.toml", "a.toml~"]


def test_save_never_replaces_a_file_gvtd_did_not_load(tmp_path: Path) -> None:
    """A file written by hand after the load, or one that failed validation, is someone's:
    a Define of its name is Busy with the file and what to do, and it stays byte for byte."""
    cfg = ConfigDir(tmp_path)
    cfg.definitions_dir.mkdir()
    (cfg.definitions_dir / "bad.toml").write_text("type = 5\n")
    cfg.load_definitions()
    (cfg.definitions_dir / "hand.toml").write_text(f'uuid = "{UUID}"\ntype = "mine"\n')
    before = {p.name: p.read_bytes() for p in cfg.definitions_dir.iterdir()}
    d = Definition(uuid="11111111-2222-3333-4444-555555555555", type="i915-GVTg_V5_4")
    with pytest.raises(Busy) as e:
        cfg.save_definition("hand", d)
    assert str(cfg.definitions_dir / "hand.toml") in e.value.message
    assert "not loaded" in e.value.message and "gvt-client reload" in e.value.message
    with pytest.raises(Busy) as e:
        cfg.save_definition("bad", d)
    assert "failed validation" in e.value.message and "remove it" in e.value.message
    assert {p.name: p.read_bytes() for p in cfg.definitions_dir.iterdir()} == before


def test_save_does_not_clobber_a_file_that_appears_during_the_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file created by someone else after gvtd looked, while its temporary file is being
    synced, is kept: the final name is taken with link(2), which refuses a name in use."""
    cfg = ConfigDir(tmp_path)
    cfg.definitions_dir.mkdir()
    target = cfg.definitions_dir / "late.toml"
    real_fsync = os.fsync

    def someone_writes_it_meanwhile(fd: int) -> None:
        real_fsync(fd)
        if not target.exists() and os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            target.write_text("# theirs\n")

    monkeypatch.setattr(os, "fsync", someone_writes_it_meanwhile)
    with pytest.raises(Busy, match="late.toml already exists"):
        cfg.save_definition("late", Definition(uuid=UUID, type="i915-GVTg_V5_4"))
    assert target.read_text() == "# theirs\n"
    assert os.listdir(cfg.definitions_dir) == ["late.toml"]  # no temporary file left


# -- definitions written without a uuid ----------------------------------------------------

MACHINE_ID = "3d1219c7c4c5404aaa1f6d2a48adfda4"


def by_hand(config: Path, name: str, text: str = 'type = "i915-GVTg_V5_4"\nstart = "auto"\n'
            ) -> Path:
    (config / "vgpus.d").mkdir(parents=True, exist_ok=True)
    path = config / "vgpus.d" / f"{name}.toml"
    path.write_text(text)
    return path


def machine_id(tmp_path: Path, text: str = MACHINE_ID + "\n") -> Path:
    path = tmp_path / "machine-id"
    path.write_text(text)
    return path


def test_a_definition_without_uuid_gets_a_lasting_one(tmp_path: Path) -> None:
    """The UUID is derived, not stored: every load (a reload, a restart, a reboot: a new
    ConfigDir) gives the same one, and the file stays as its author wrote it."""
    import uuid

    from gvtd.config import derived_uuid, uuid_namespace

    mid = machine_id(tmp_path)
    path = by_hand(tmp_path / "etc", "win10")
    written = path.read_bytes()
    first, problems = ConfigDir(tmp_path / "etc", mid).load_definitions()
    assert problems == []
    u = first["win10"].uuid
    assert uuid.UUID(u).version == 5 and u == derived_uuid(uuid_namespace(mid), "win10")
    assert (first["win10"].type, first["win10"].start) == ("i915-GVTg_V5_4", "auto")
    again, _ = ConfigDir(tmp_path / "etc", mid).load_definitions()
    assert again["win10"].uuid == u
    assert path.read_bytes() == written and os.listdir(path.parent) == ["win10.toml"]
    # another machine (another machine id) gets another UUID for the same file
    other, _ = ConfigDir(tmp_path / "etc", machine_id(tmp_path / "etc", "0" * 31 + "1\n")
                         ).load_definitions()
    assert other["win10"].uuid != u


def test_namespace_is_systemds_app_specific_machine_id() -> None:
    """What the docs tell a person to run gives the namespace gvtd uses: systemd's own
    sd_id128_get_machine_app_specific over this host's /etc/machine-id."""
    import subprocess

    from gvtd.config import APP_ID, MACHINE_ID_FILE, uuid_namespace

    out = subprocess.run(["systemd-id128", "machine-id", f"--app-specific={APP_ID.hex}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert uuid_namespace(MACHINE_ID_FILE).hex == out


def test_derived_uuids_never_collide_and_a_written_uuid_wins(tmp_path: Path) -> None:
    from gvtd.config import derived_uuid, uuid_namespace

    mid = machine_id(tmp_path)
    etc = tmp_path / "etc"
    for name in ("a", "b", "c"):
        by_hand(etc, name)
    defs, problems = ConfigDir(etc, mid).load_definitions()
    assert problems == [] and len({d.uuid for d in defs.values()}) == 3
    # "z" copied b's UUID (from `gvt-client list`) into its file: the written one is z's
    # though b's file comes first, and b's problem says what to do
    taken = derived_uuid(uuid_namespace(mid), "b")
    by_hand(etc, "z", f'uuid = "{taken}"\ntype = "i915-GVTg_V5_4"\n')
    defs, problems = ConfigDir(etc, mid).load_definitions()
    assert list(defs) == ["a", "c", "z"] and defs["z"].uuid == taken
    (p,) = problems
    assert (Path(p.file).name, p.field) == ("b.toml", "uuid")
    assert "already used by z" in p.reason and "write a uuid of its own" in p.reason


@pytest.mark.parametrize("content, says", [
    (None, "does not exist"),
    ("", "is empty"),
    ("uninitialized\n", "holds 'uninitialized', not a machine id"),
])
def test_no_machine_id_is_a_problem_of_that_file_alone(tmp_path: Path, content: str | None,
                                                       says: str) -> None:
    """No lasting UUID can be made: the file is reported (what is wrong, what to do) and
    skipped, definitions with a uuid still load, and nothing is written."""
    mid = tmp_path / "machine-id"
    if content is not None:
        mid.write_text(content)
    etc = tmp_path / "etc"
    path = by_hand(etc, "hand")
    by_hand(etc, "written", f'uuid = "{UUID}"\ntype = "i915-GVTg_V5_4"\n')
    defs, problems = ConfigDir(etc, mid).load_definitions()
    assert list(defs) == ["written"]
    (p,) = problems
    assert (p.file, p.field) == (str(path), "uuid")
    assert f"{mid} {says}" in p.reason and "uuidgen" in p.reason
    assert sorted(os.listdir(etc / "vgpus.d")) == ["hand.toml", "written.toml"]


def test_a_machine_id_for_this_boot_only_is_refused(tmp_path: Path) -> None:
    """systemd mounts a made-up id over /etc/machine-id when /etc cannot keep one: a UUID
    derived from it would change at the next boot. Seen in a mount namespace of its own."""
    import subprocess
    import sys

    etc = tmp_path / "etc"
    by_hand(etc, "hand")
    mid = machine_id(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    script = ("import sys; from pathlib import Path; from gvtd.config import ConfigDir; "
              "print([p.reason for p in ConfigDir(Path(sys.argv[1]), "
              "Path(sys.argv[2])).load_definitions()[1]])")
    out = subprocess.run(
        ["unshare", "--mount", "sh", "-c",
         f"mount -t tmpfs none {run} && echo {MACHINE_ID} > {run}/machine-id && "
         f'mount --bind {run}/machine-id {mid} && exec "$@"', "sh",
         sys.executable, "-c", script, str(etc), str(mid)],
        capture_output=True, text=True, check=True).stdout
    assert "mounted over for this boot only" in out and "systemd-machine-id-commit" in out
    assert "hand" in ConfigDir(etc, mid).load_definitions()[0]  # the same id, kept: fine


def test_only_a_file_may_leave_the_uuid_out() -> None:
    with pytest.raises(ValidationError, match="uuid"):
        Definition.model_validate({"type": "i915-GVTg_V5_4"})

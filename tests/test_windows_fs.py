"""Windows file semantics: every write goes through rules Windows enforces (tests/fixtures/windows_fs.py
makes Linux enforce them too), leftovers of a crash are recognisable and swept, names and path
lengths Windows refuses are errors naming the field."""

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import engine.fsutil as fsutil
from engine.dataset.layout import DatasetError
from engine.dataset.prepare import prepare_dataset
from engine.fsutil import atomic_dir, atomic_path, atomic_write_text, sweep_stale_temps
from engine.names import OUTPUT_TAIL, name_problem, path_length_problem
from engine.preset import default_values, load_preset, save_preset, validate_values
from engine.training.cache import EntryCache

# Windows has these rules itself and tests/fixtures/windows_fs.py enforces them on Linux.
windows_rules = pytest.mark.skipif(sys.platform == "darwin", reason="macOS has no /proc to enforce Windows' rules")


@windows_rules
def test_the_rules_are_enforced_here(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    with open(path, "rb") as handle, pytest.raises(OSError) as refused:
        os.fsync(handle.fileno())
    assert refused.value.errno == errno.EBADF
    (tmp_path / "new.bin").write_bytes(b"y")
    with open(path, "rb"), pytest.raises(PermissionError):
        os.replace(tmp_path / "new.bin", path)  # onto an open file
    with open(path, "rb"), pytest.raises(PermissionError):
        os.replace(path, tmp_path / "g.bin")  # an open file away
    (tmp_path / "d").mkdir()
    (tmp_path / "e").mkdir()
    with pytest.raises(PermissionError):
        os.replace(tmp_path / "d", tmp_path / "e")


def test_files_are_written_and_flushed_through_a_writable_handle(tmp_path):
    atomic_write_text(tmp_path / "preset.json", "{}")
    save_preset(default_values(), tmp_path / "p.json")
    assert load_preset(tmp_path / "p.json").values == default_values()
    cache = EntryCache(tmp_path / "cache")
    cache.put("k", {"latent": torch.ones(2)})
    assert torch.equal(EntryCache(tmp_path / "cache").get("k")["latent"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "p.json", "preset.json"]


def test_temporary_names_are_visible_and_say_what_they_are(tmp_path):
    with atomic_path(tmp_path / "tiny.safetensors") as tmp:
        tmp.write_bytes(b"lora")
        assert tmp.name.startswith(f"tiny.safetensors.fluxlora-{os.getpid()}-") and tmp.name.endswith(".tmp")
    with atomic_dir(tmp_path / "tiny-state") as folder:
        assert folder.name.startswith(f"tiny-state.fluxlora-{os.getpid()}-") and folder.suffix == ".tmp"
        (folder / "train_state.json").write_text("{}", encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-state", "tiny.safetensors"]


@windows_rules
def test_a_replace_waits_while_another_program_holds_the_file(tmp_path):
    target = tmp_path / "working.json"
    target.write_text("old", encoding="utf-8")
    handle = open(target, "rb")  # an indexer or antivirus scan that lets go after a moment
    threading.Timer(0.3, handle.close).start()
    started = time.monotonic()
    atomic_write_text(target, "new")
    assert time.monotonic() - started >= 0.25
    assert target.read_text(encoding="utf-8") == "new"


@windows_rules
def test_a_file_that_stays_open_fails_naming_it_and_keeps_the_old_one(tmp_path, monkeypatch):
    monkeypatch.setattr(fsutil, "REPLACE_RETRY_S", 0.2)
    target = tmp_path / "tiny.safetensors"
    target.write_bytes(b"old")
    with open(target, "rb"):  # e.g. ComfyUI has last epoch's LoRA open
        with pytest.raises(PermissionError) as refused:
            atomic_write_text(target, "new")
    assert str(target) in str(refused.value) and "open" in str(refused.value)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]


@windows_rules
def test_a_state_folder_with_an_open_file_is_kept_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(fsutil, "REPLACE_RETRY_S", 0.2)
    state = tmp_path / "tiny-state"
    state.mkdir()
    (state / "optimizer.bin").write_bytes(b"old")
    with open(state / "optimizer.bin", "rb"):
        with pytest.raises(PermissionError, match="tiny-state"):
            with atomic_dir(state) as folder:
                (folder / "optimizer.bin").write_bytes(b"new")
    assert (state / "optimizer.bin").read_bytes() == b"old"
    with atomic_dir(state) as folder:  # and replaced once nothing holds it
        (folder / "optimizer.bin").write_bytes(b"new")
    assert (state / "optimizer.bin").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-state"]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_sweep_removes_only_our_stale_leftovers_and_restores_a_parked_folder(tmp_path):
    dead, mine = dead_pid(), os.getpid()
    crashed_file = tmp_path / f"tiny.safetensors.fluxlora-{dead}-ab12cd34.tmp"
    crashed_file.write_bytes(b"half")
    crashed_state = tmp_path / f"tiny-state.fluxlora-{dead}-zz99yy88.tmp"
    (crashed_state / "sub").mkdir(parents=True)
    (crashed_state / "sub" / "optimizer.bin").write_bytes(b"half")
    parked = tmp_path / f"tiny-000001-state.fluxlora-{dead}-0a0b0c0d.old.tmp"  # crash between two renames
    parked.mkdir()
    (parked / "train_state.json").write_text("{}", encoding="utf-8")
    parked_replaced = tmp_path / f"tiny-000002-state.fluxlora-{dead}-0a0b0c0e.old.tmp"
    parked_replaced.mkdir()
    (tmp_path / "tiny-000002-state").mkdir()
    live = tmp_path / f"tiny-step00000010-state.fluxlora-{mine}-11111111.tmp"  # being written right now
    live.mkdir()
    old_live = tmp_path / f"other.safetensors.fluxlora-{mine}-22222222.tmp"
    old_live.write_bytes(b"")
    os.utime(old_live, (time.time() - 2 * 86400,) * 2)  # untouched for two days: PID reused by now
    foreign = ["notes.tmp", ".tiny.safetensors.abc.tmp", "tiny.fluxlora-x.tmp", "mine.fluxlora-12-ab.txt"]
    for name in foreign:
        (tmp_path / name).write_bytes(b"user's")
    done = sweep_stale_temps(tmp_path)
    assert len(done) == 5 and "restored tiny-000001-state from an interrupted save" in done
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        foreign + ["tiny-000001-state", "tiny-000002-state", live.name])
    assert (tmp_path / "tiny-000001-state" / "train_state.json").is_file()
    assert sweep_stale_temps(tmp_path / "missing") == []


def test_training_start_sweeps_the_output_folder_and_the_disk_cache(tiny_model_files, tmp_path):
    from engine.trainer import train
    from tests.fixtures.datasets import tiny_training_values

    values = tiny_training_values(tiny_model_files, tmp_path, cache_latents_to_disk=True)
    dead = dead_pid()
    leftovers = [Path(values["output_dir"]) / f"tiny-state.fluxlora-{dead}-abcdabcd.tmp",
                 Path(values["train_data_dir"], ".fluxlora-cache", "latents", f"k.safetensors.fluxlora-{dead}-x.tmp")]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    stop, events = threading.Event(), []
    stop.set()  # sweeping happens before anything slow: no need to train
    result = train(values, events.append, stop)
    assert result.status == "stopped"
    assert not any(path.exists() for path in leftovers)
    assert sum("left over from an interrupted save" in getattr(e, "text", "") for e in events) == 2


@pytest.mark.parametrize("name", ["CON", "con", "aux.lora", "NUL", "COM1", "lpt9.x", "lora.", "lora ", " lora",
                                  "a|b", "a?b", "a*b", 'a"b', "a<b", "a:b", "a/b", "a\\b", "tab\there", ""])
def test_names_windows_refuses_are_an_error_naming_output_name(name):
    assert name_problem(name)
    problems = validate_values(dict(default_values(), output_name=name))
    assert len(problems) == 1 and problems[0].startswith(f"output_name: {name!r} is not allowed: ")


@pytest.mark.parametrize("name", ["my_flux_lora", "console", "COM10", "ohwx v2.1", "naïve-ü", "CONfig"])
def test_names_windows_accepts(name):
    assert name_problem(name) is None
    assert validate_values(dict(default_values(), output_name=name)) == []


def test_prepare_refuses_a_class_that_windows_would_cut_short(tmp_path):
    from tests.test_dataset import photos

    with pytest.raises(DatasetError, match=r"class: 'man\.' cannot end a folder name: it ends with a dot"):
        prepare_dataset("ohwx", "man.", photos(tmp_path / "src"), 10, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_a_path_over_260_characters_is_a_clear_message_unless_long_paths_are_on(tmp_path, monkeypatch):
    deep = str(tmp_path / ("x" * 120) / ("y" * 120))
    problem = path_length_problem("output_dir", deep, len("tiny") + OUTPUT_TAIL, enabled=False)
    assert problem.startswith(f"output_dir: {deep} is too long") and "LongPathsEnabled" in problem
    assert path_length_problem("output_dir", deep, 40, enabled=True) is None
    assert path_length_problem("output_dir", str(tmp_path), 40, enabled=False) is None

    from engine.trainer import check_ready

    values = dict(default_values(), output_dir=deep)
    assert not any("too long" in p for p in check_ready(values))  # long paths work here
    monkeypatch.setattr("engine.names.long_paths_enabled", lambda: False)  # a Windows without them
    assert any(p.startswith(f"output_dir: {deep} is too long") for p in check_ready(values))

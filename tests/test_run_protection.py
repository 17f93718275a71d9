"""A run protects what is in its output folder: every asked-for epoch stays numbered across a chain
of runs, a finished run is replaced only on request, one run per folder, bounded states."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.events import Log
from engine.fsutil import DiskFullError, atomic_path
from engine.preset import save_preset
from engine.train_state import read_train_state
from engine.trainer import continue_from_latest_state, train
from engine.training.lock import LOCK_FILE, RunLock
from tests.fixtures.cli import run_engine
from tests.fixtures.datasets import tiny_training_values

ROOT = Path(__file__).resolve().parents[1]


def names(folder):
    return sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))


def test_chain_3_5_6_epochs_keeps_every_epoch_and_its_state(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, images=2, epoch=3, save_state=True)
    assert train(values).status == "completed"
    for epochs in (5, 6):
        assert train(continue_from_latest_state(dict(values, epoch=epochs))).status == "completed"
    expected = [f"tiny-{e:06d}{suffix}" for e in range(1, 7) for suffix in ("-state", ".safetensors")]
    assert names(values["output_dir"]) == sorted(expected + ["tiny-state", "tiny.safetensors"])
    out = Path(values["output_dir"])
    assert [read_train_state(out / f"tiny-{e:06d}-state").current_step for e in range(1, 7)] == [4, 8, 12, 16, 20, 24]
    # The end-of-run state is the last epoch's, stored once (hard links), not a second copy.
    assert os.path.samefile(out / "tiny-000006-state" / "adapter.safetensors", out / "tiny-state" / "adapter.safetensors")
    assert (out / "tiny-000003-state" / "adapter.safetensors").stat().st_nlink == 1


def test_keep_last_n_epoch_states(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, images=2, epoch=4, save_state=True,
                                  save_last_n_epochs_state=2)
    events = []
    assert train(values, on_event=events.append).status == "completed"
    assert names(values["output_dir"]) == ["tiny-000001.safetensors", "tiny-000002.safetensors",
                                           "tiny-000003-state", "tiny-000003.safetensors", "tiny-000004-state",
                                           "tiny-000004.safetensors", "tiny-state", "tiny.safetensors"]
    assert any(isinstance(e, Log) and e.text == "removed tiny-000001-state (Keep last N epoch states: 2)"
               for e in events)


def test_start_over_a_finished_run_is_refused_and_overwrite_replaces_it_whole(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, images=2, epoch=3)
    assert train(values).status == "completed"
    before = names(values["output_dir"])
    preset = tmp_path / "p.json"
    save_preset(values, preset)
    again = run_engine("train", preset, "--set", "epoch=2")
    assert again.returncode == 1
    assert (f"error: output_name: {values['output_dir']} already holds a run named tiny (4 LoRA files, 1 state "
            "folder, newest state tiny-state at epoch 3, step 12); starting again would replace its files") in again.stderr
    assert ("to keep it: --continue to train it further, --set output_name=tiny-2 for a new run beside it, or "
            "--overwrite to delete its files and start again") in again.stderr
    assert names(values["output_dir"]) == before
    assert train(dict(values, epoch=2)).status == "failed"
    assert train(dict(values, epoch=2), overwrite=True).status == "completed"
    assert names(values["output_dir"]) == ["tiny-000001.safetensors", "tiny-000002.safetensors", "tiny-state",
                                           "tiny.safetensors"]  # no epoch 3 of the old run mixed in
    assert read_train_state(Path(values["output_dir"]) / "tiny-state").current_step == 8


def test_a_live_run_holds_the_folder_and_a_stale_lock_is_replaced(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, images=2, epoch=1)
    out = Path(values["output_dir"])
    with RunLock(out, "other") as lock:
        with pytest.raises(RuntimeError, match="another training run is writing into"):
            RunLock(out).acquire()
        result = train(values)
        assert result.status == "failed"
        assert f"output_dir: another training run is writing into {out} (process {os.getpid()} on " in result.message
        assert ", training other); wait for it to finish, stop it, or choose another output folder" in result.message
    assert not (out / LOCK_FILE).exists() and lock.replaced is None
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = json.loads(json.dumps({"pid": int(finished.stdout), "host": socket.gethostname(), "started_at": 1.0e9,
                                  "process_started": 1.0e9, "output_name": "crashed"}))
    (out / LOCK_FILE).write_text(json.dumps(dead))
    events = []
    assert train(values, on_event=events.append).status == "completed"
    warnings = [e.text for e in events if isinstance(e, Log) and e.level == "warning"]
    assert any("a run lock left behind by process" in w and "which is no longer running" in w for w in warnings)
    assert not (out / LOCK_FILE).exists()


def test_stopped_cli_run_exits_130_not_0(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, images=2, epoch=400, save_every_n_epochs=0)
    preset = tmp_path / "p.json"
    save_preset(values, preset)
    process = subprocess.Popen([sys.executable, "-m", "engine", "train", str(preset)], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in process.stderr:
        if line.startswith("training from step"):
            break
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 130
    assert stdout.startswith("stopped at step ")


def test_disk_full_names_the_file_and_keeps_nothing_half_written(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux) to make a real ENOSPC")
    target = tmp_path / "tiny-000003.safetensors"
    with pytest.raises(DiskFullError) as caught:
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"header")
            with open("/dev/full", "wb") as full:
                full.write(b"x" * 65536)
                full.flush()
    assert caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_message_names_the_path_and_the_last_complete_state(tiny_model_files, tmp_path):
    from engine.training.guard import disk_full_message
    from engine.trainer import with_continue_point

    values = tiny_training_values(tiny_model_files, tmp_path, images=2, epoch=1)
    assert train(values).status == "completed"
    out = Path(values["output_dir"])
    full = DiskFullError(28, "No space left on device", str(out / "tiny-000002-state"))
    assert with_continue_point(values, disk_full_message(full)) == (
        f"the disk is full: {out / 'tiny-000002-state'} could not be written (nothing half-written was kept); free "
        f"some space on that drive; to continue from: state {out / 'tiny-state'} (epoch 1, step 4)")

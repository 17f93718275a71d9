import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine.events import Log
from engine.preset import save_preset
from engine.train_state import find_latest_state, read_train_state
from engine.trainer import train
from engine.training.lock import LOCK_FILE
from tests.fixtures.cli import run_engine
from tests.fixtures.datasets import tiny_training_values

ROOT = Path(__file__).resolve().parents[1]


def values_for(tiny_model_files, root, **overrides):
    # 5 images x 2 repeats, batch 1 = 10 steps per epoch, as in the issue.
    settings = dict(images=5, repeats=2, save_every_n_epochs=0, save_precision="float")
    return tiny_training_values(tiny_model_files, root, **{**settings, **overrides})


def tensors_equal(a, b):
    a, b = load_file(str(a)), load_file(str(b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


KILL_ME = "kill me now"


def run_until_killed(code: str, *args) -> int:
    """Run `code`, which prints KILL_ME and waits at the moment to crash; kill it there the way the
    platform hard-kills (Popen.kill: SIGKILL here, TerminateProcess on Windows). Returns its exit code."""
    child = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        for line in child.stdout:
            if line.strip() == KILL_ME:
                child.kill()
                break
        else:
            raise AssertionError(f"the run ended (exit {child.wait(timeout=60)}) before it asked to be killed")
        return child.wait(timeout=60)
    finally:
        child.stdout.close()
        if child.poll() is None:
            child.kill()
            child.wait(timeout=60)


def test_three_runs_15_25_30_are_cumulative_and_equal_one_uninterrupted_run(tiny_model_files, tmp_path):
    resumed = values_for(tiny_model_files, tmp_path / "resumed", epoch=15)
    out = Path(resumed["output_dir"])
    assert train(resumed).steps == 150
    state = out / "tiny-state"
    assert (read_train_state(state).current_step, read_train_state(state).current_epoch) == (150, 15)
    for epoch, expected in ((25, 250), (30, 300)):
        result = train(dict(resumed, epoch=epoch, resume=str(state)))
        assert (result.status, result.steps, result.epoch) == ("completed", expected, epoch)
        saved = read_train_state(state)
        assert (saved.current_step, saved.current_epoch, saved.steps_per_epoch) == (expected, epoch, 10)
    history = read_train_state(state).runs
    assert [(r.start_step, r.end_step) for r in history] == [(0, 150), (150, 250), (250, 300)]
    metadata = json.loads(json.dumps(_metadata(out / "tiny.safetensors")))
    assert (metadata["ss_steps"], metadata["ss_epoch"]) == ("300", "30")

    straight = values_for(tiny_model_files, tmp_path / "straight", epoch=30)
    assert train(straight).steps == 300
    assert tensors_equal(out / "tiny.safetensors", Path(straight["output_dir"]) / "tiny.safetensors")


def _metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


KILL_AT_STEP = """
import sys, time
from engine.events import Progress
from engine.preset import load_preset
from engine.trainer import train

def on_event(event):
    if isinstance(event, Progress) and event.phase == "training" and event.done == int(sys.argv[2]):
        print("kill me now", flush=True)
        time.sleep(600)

train(load_preset(sys.argv[1]).values, on_event=on_event)
"""


def test_sigkill_mid_epoch_then_continue_equals_uninterrupted(tiny_model_files, tmp_path):
    values = values_for(tiny_model_files, tmp_path / "killed", epoch=3, save_every_n_steps=7, save_state=True)
    preset = tmp_path / "killed.json"
    save_preset(values, preset)
    assert run_until_killed(KILL_AT_STEP, preset, 17) != 0
    out = Path(values["output_dir"])
    assert find_latest_state(out, "tiny") == out / "tiny-step00000014-state"
    assert not (out / "tiny.safetensors").exists()
    continued = run_engine("train", preset, "--continue")
    assert continued.returncode == 0, continued.stderr
    assert "continuing from tiny-step00000014-state (step 14)" in continued.stderr
    straight = values_for(tiny_model_files, tmp_path / "straight", epoch=3)
    train(straight)
    assert tensors_equal(out / "tiny.safetensors", Path(straight["output_dir"]) / "tiny.safetensors")


KILL_DURING_SECOND_STATE_SAVE = """
import sys, time
import engine.training.checkpoint as checkpoint
from engine.preset import load_preset
from engine.trainer import train

calls = []
real_write = checkpoint.write_train_state
def crash_on_second_save(folder, state):
    calls.append(folder)
    if len(calls) == 2:  # adapter and optimizer of the second state are already on disk
        print("kill me now", flush=True)
        time.sleep(600)
    real_write(folder, state)
checkpoint.write_train_state = crash_on_second_save
train(load_preset(sys.argv[1]).values)
"""


def test_kill_during_a_state_save_leaves_the_previous_state_usable(tiny_model_files, tmp_path):
    values = values_for(tiny_model_files, tmp_path, epoch=2, save_every_n_epochs=1, save_state=True)
    preset = tmp_path / "p.json"
    save_preset(values, preset)
    assert run_until_killed(KILL_DURING_SECOND_STATE_SAVE, preset) != 0
    out = Path(values["output_dir"])
    # Epoch 2's LoRA was written, its state was not: the half-written one says it is temporary,
    # and the next run removes it. The killed run's lock stays behind, stale, until then.
    names = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    leftovers = [name for name in names if name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith("tiny-000002-state.fluxlora-"), names
    assert [name for name in names if not name.endswith(".tmp")] == [
        "tiny-000001-state", "tiny-000001.safetensors", "tiny-000002.safetensors"]
    assert find_latest_state(out, "tiny") == out / "tiny-000001-state"
    assert read_train_state(out / "tiny-000001-state").current_step == 10
    result = train(dict(values, resume=str(out / "tiny-000001-state")))
    assert (result.status, result.steps) == ("completed", 20)
    assert not (out / leftovers[0]).exists()


def test_kohya_state_is_repaired_on_resume_with_backup(tiny_model_files, tmp_path):
    first = values_for(tiny_model_files, tmp_path / "first", epoch=1)
    train(first)
    kohya = tmp_path / "kohya" / "ohwx-000025-state"
    kohya.mkdir(parents=True)
    save_file(load_file(str(Path(first["output_dir"]) / "tiny.safetensors")), str(kohya / "model.safetensors"))
    (kohya / "train_state.json").write_text(json.dumps({"current_epoch": 25, "current_step": 100}))
    events = []
    values = values_for(tiny_model_files, tmp_path / "second", epoch=26, resume=str(kohya))
    result = train(values, on_event=events.append)
    assert (result.status, result.steps, result.epoch) == ("completed", 260, 26)
    assert json.loads((kohya / "train_state.json.bak").read_text()) == {"current_epoch": 25, "current_step": 100}
    assert read_train_state(kohya).current_step == 250
    warnings = [e.text for e in events if isinstance(e, Log) and e.level == "warning"]
    assert any("repaired ohwx-000025-state/train_state.json: current_step 100 -> 250" in w for w in warnings)
    assert any("continuing with a fresh optimizer state" in w for w in warnings)


def test_mid_epoch_kohya_state_of_a_second_run_continues_at_its_true_step(tiny_model_files, tmp_path):
    # sd-scripts' run 2 (resumed after epoch 1) saved at its step 18, mid-epoch 3: (3, 18) at 10 steps per
    # epoch is step 28. Read as completed epochs it was 38, beyond epoch 3: "already trained", nothing ran.
    first = values_for(tiny_model_files, tmp_path / "first", epoch=1)
    train(first)
    kohya = tmp_path / "kohya" / "run2-step00000018-state"
    kohya.mkdir(parents=True)
    save_file(load_file(str(Path(first["output_dir"]) / "tiny.safetensors")), str(kohya / "model.safetensors"))
    (kohya / "train_state.json").write_text(json.dumps({"current_epoch": 3, "current_step": 18}))
    events = []
    result = train(values_for(tiny_model_files, tmp_path / "second", epoch=3, resume=str(kohya)),
                   on_event=events.append)
    assert (result.status, result.steps, result.epoch) == ("completed", 30, 3)
    trained = [e.done for e in events if getattr(e, "phase", None) == "training"]
    assert trained == [29, 30]
    assert read_train_state(kohya).current_step == 28


def test_ambiguous_kohya_state_is_refused_before_loading(tiny_model_files, tmp_path):
    kohya = tmp_path / "kohya" / "x-state"
    kohya.mkdir(parents=True)
    (kohya / "train_state.json").write_text(json.dumps({"current_epoch": 1, "current_step": 0}))
    events = []
    result = train(values_for(tiny_model_files, tmp_path / "run", epoch=2, resume=str(kohya)), on_event=events.append)
    assert result.status == "failed"
    assert result.message.startswith(f"resume: {kohya}: current_step is 0")
    assert "give the true step (fluxlora fix-state FOLDER --step N" in result.message
    logged = [e.text for e in events if isinstance(e, Log)]
    assert any("steps per epoch" in text for text in logged)  # the dataset was read ...
    assert not any("loading" in text for text in logged)  # ... but no model was loaded
    assert json.loads((kohya / "train_state.json").read_text()) == {"current_epoch": 1, "current_step": 0}


def test_gradient_accumulation_counts_optimizer_steps(tiny_model_files, tmp_path):
    values = values_for(tiny_model_files, tmp_path, epoch=2, gradient_accumulation_steps=2)
    assert train(values).steps == 10
    state = read_train_state(Path(values["output_dir"]) / "tiny-state")
    assert (state.current_step, state.current_epoch, state.steps_per_epoch) == (10, 2, 5)


def test_incompatible_resume_is_a_clear_error(tiny_model_files, tmp_path):
    values = values_for(tiny_model_files, tmp_path, epoch=1)
    train(values)
    state = str(Path(values["output_dir"]) / "tiny-state")
    rank = train(dict(values, epoch=2, resume=state, network_dim=8))
    assert rank.status == "failed" and "is a rank 4 LoRA, but Network rank (dim) is 8; set it to 4" in rank.message
    data = train(dict(values, epoch=2, resume=state, train_batch_size=2))
    assert data.status == "failed"
    assert "was trained at 10 steps per epoch, this preset gives 5; the dataset, repeats, batch size" in data.message


def test_changing_learning_rate_on_resume_takes_effect(tiny_model_files, tmp_path):
    from engine.events import Progress

    values = values_for(tiny_model_files, tmp_path, epoch=1)
    train(values)
    events = []
    train(dict(values, epoch=2, learning_rate=5e-4, unet_lr=5e-4,
               resume=str(Path(values["output_dir"]) / "tiny-state")), on_event=events.append)
    lrs = {e.lr for e in events if isinstance(e, Progress) and e.phase == "training"}
    assert lrs == {5e-4}


def test_fix_state_cli_with_steps_and_with_preset(tiny_model_files, tmp_path):
    folder = tmp_path / "kohya-state"
    folder.mkdir()
    (folder / "train_state.json").write_text(json.dumps({"current_epoch": 25, "current_step": 100}))
    dry = run_engine("fix-state", folder, "--steps-per-epoch", "10", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith(f"would change {folder}: current_step 100 -> 250")
    assert not (folder / "train_state.json.bak").exists()
    preset = tmp_path / "p.json"
    save_preset(values_for(tiny_model_files, tmp_path), preset)  # 5 x 2 at batch 1 = 10 steps per epoch
    fixed = run_engine("fix-state", folder, "--preset", preset)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.splitlines()[-1] == "the original is kept as train_state.json.bak"
    assert read_train_state(folder).current_step == 250

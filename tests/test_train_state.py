import json

import pytest

from engine.train_state import (
    AmbiguousState,
    StateError,
    TrainState,
    find_latest_state,
    fix_train_state,
    read_train_state,
    read_true_step,
    write_train_state,
)
from tests.fixtures.cli import run_engine


def kohya_state(folder, epoch, step):
    folder.mkdir(parents=True)
    (folder / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": step}))
    return folder


# sd-scripts' own loop at 12 steps per epoch: run 1 to step 18, then run 2 resumed from its end
# state (it restarts at the epoch-1 boundary and counts from 0). (folder, epoch, step) -> true.
SEVEN_ROWS = [
    ("ohwx-step00000006-state", 1, 6, 6),    # step 6 of run 1
    ("ohwx-000001-state", 1, 12, 12),        # epoch-1 end
    ("ohwx-state", 2, 18, 18),               # step 18 / end of run 1, mid-epoch 2
    ("run2-step00000006-state", 2, 6, 18),   # run 2, its step 6
    ("run2-000002-state", 2, 12, 24),        # run 2, epoch-2 end
    ("run2-step00000018-state", 3, 18, 30),  # run 2, its step 18
    ("run2-state", 3, 24, 36),               # run 2 end
]


@pytest.mark.parametrize("name, epoch, step, true", SEVEN_ROWS)
def test_the_seven_kohya_folders_get_their_true_step(tmp_path, name, epoch, step, true):
    folder = kohya_state(tmp_path / name, epoch, step)
    assert read_true_step(folder, 12).step == true
    report = fix_train_state(folder, steps_per_epoch=12)
    assert report.changed == (step != true)
    saved = read_train_state(folder)
    assert saved.current_step == true
    if report.changed:
        assert (saved.current_epoch, saved.step_in_epoch, saved.steps_per_epoch) == (true // 12, true % 12, 12)
        assert saved.repaired_from == {"current_epoch": epoch, "current_step": step}
        assert json.loads((folder / "train_state.json.bak").read_text()) == {"current_epoch": epoch,
                                                                             "current_step": step}
    else:  # already cumulative: the user's file is not touched
        assert json.loads((folder / "train_state.json").read_text()) == {"current_epoch": epoch, "current_step": step}
        assert not (folder / "train_state.json.bak").exists()


def test_repair_reason_says_where_the_run_started(tmp_path):
    folder = kohya_state(tmp_path / "run2-step00000018-state", 3, 18)
    report = fix_train_state(folder, 12)
    assert report.summary() == (f"{folder}: current_step 18 -> 30: kohya's current_step 18 counts only the run "
                                "that wrote it, which started after epoch 1: 1 x 12 + 18 = 30 steps since the first run")


def test_kohya_ss_gui_run_ending_mid_epoch_at_batch_4(tmp_path):
    # 25 images x 10 repeats at batch 4: 63 steps per epoch; the GUI's max_train_steps 938 ends in epoch 15.
    folder = kohya_state(tmp_path / "ohwx-state", 15, 938)
    report = fix_train_state(folder, 63)
    assert (report.changed, read_train_state(folder).current_step) == (False, 938)
    assert report.summary().endswith("nothing to repair: current_step 938 is already the count since the first "
                                     "run (epoch 15 in progress at 63 steps per epoch)")


def test_the_3750_6250_7500_chain(tmp_path):
    # 250 steps per epoch: run 1 to epoch 15, run 2 to epoch 25, run 3 to epoch 30, as sd-scripts writes them.
    for name, epoch, step, true in (("run1-state", 15, 3750, 3750), ("run2-state", 25, 2500, 6250),
                                    ("run3-state", 30, 1250, 7500)):
        folder = kohya_state(tmp_path / name, epoch, step)
        assert fix_train_state(folder, 250).after.current_step == true
        assert read_train_state(folder).current_step == true


def test_a_state_we_repaired_is_never_repaired_twice(tmp_path):
    folder = kohya_state(tmp_path / "run2-step00000018-state", 3, 18)
    original = (folder / "train_state.json").read_bytes()
    assert fix_train_state(folder, 12).after.current_step == 30
    repaired = (folder / "train_state.json").read_bytes()
    again = fix_train_state(folder, 12)
    assert not again.changed and "already repaired" in again.reason
    assert (folder / "train_state.json").read_bytes() == repaired
    assert (folder / "train_state.json.bak").read_bytes() == original
    # A repaired file read as kohya's would give 30 -> 18 + 30: it must keep 30, with or without the preset.
    assert read_true_step(folder).step == 30 and read_true_step(folder, 12).step == 30


def test_a_file_an_earlier_fluxlora_rewrote_wrongly_is_read_from_its_backup(tmp_path):
    # The earlier repair took current_epoch as completed epochs: (1, 6) became 18 with a backup.
    folder = kohya_state(tmp_path / "ohwx-step00000006-state", 1, 6)
    (folder / "train_state.json.bak").write_text((folder / "train_state.json").read_text())
    (folder / "train_state.json").write_text(json.dumps({"current_epoch": 1, "current_step": 18, "runs": [],
                                                          "step_in_epoch": 6, "steps_per_epoch": 12}))
    report = fix_train_state(folder)
    assert (report.kind, report.before.current_step, report.after.current_step) == ("earlier repair", 18, 6)
    assert "from kohya's original (1, 6) in train_state.json.bak" in report.reason
    assert fix_train_state(folder, 12).changed is False
    # Without its backup the file cannot tell: it asks.
    (folder / "train_state.json.bak").unlink()
    (folder / "train_state.json").write_text(json.dumps({"current_epoch": 1, "current_step": 18, "runs": [],
                                                          "step_in_epoch": 6, "steps_per_epoch": 12}))
    with pytest.raises(AmbiguousState, match="original train_state.json.bak is gone; give the true step"):
        fix_train_state(folder, 12)


@pytest.mark.parametrize("name, epoch, step, spe, message", [
    ("a-state", 2, 6, None, "does not say how many steps an epoch has .current_epoch 2, current_step 6.; give the "
     "steps per epoch"),
    ("b-state", 1, 0, 12, "current_step is 0 .current_epoch 1.: sd-scripts never writes that"),
    ("c-state", 1, 18, 12, "current_step 18 needs 2 epochs at 12 steps per epoch, but current_epoch is 1: the "
     "steps per epoch do not match"),
    ("d-000002-state", 2, 20, 12, "the folder name says the end of epoch 2, but current_step 20"),
])
def test_what_the_file_cannot_tell_is_asked_for(tmp_path, name, epoch, step, spe, message):
    folder = kohya_state(tmp_path / name, epoch, step)
    with pytest.raises(AmbiguousState, match=message):
        fix_train_state(folder, spe)
    assert not (folder / "train_state.json.bak").exists()
    # The user's answer is taken as it is, and marks the file repaired.
    report = fix_train_state(folder, spe, step=7)
    assert report.after.current_step == 7 and read_true_step(folder, spe).step == 7


def test_step_beyond_the_next_epoch_means_wrong_steps_per_epoch(tmp_path):
    folder = kohya_state(tmp_path / "s-state", 3, 60)
    with pytest.raises(StateError, match="the steps per epoch do not match this state"):
        fix_train_state(folder, 10)


def test_dry_run_writes_nothing(tmp_path):
    folder = kohya_state(tmp_path / "x-state", 30, 1250)
    report = fix_train_state(folder, 250, dry_run=True)
    assert report.after.current_step == 7500
    assert json.loads((folder / "train_state.json").read_text())["current_step"] == 1250
    assert not (folder / "train_state.json.bak").exists()


def test_bad_state_folders_are_named(tmp_path):
    with pytest.raises(StateError, match="no train_state.json here"):
        read_train_state(tmp_path)
    (tmp_path / "train_state.json").write_text('{"current_epoch": 1}')
    with pytest.raises(StateError, match="current_step missing or not a whole number"):
        read_train_state(tmp_path)


def test_our_state_keeps_unknown_keys_and_refuses_other_steps_per_epoch(tmp_path):
    write_train_state(tmp_path, TrainState(current_epoch=2, current_step=20, steps_per_epoch=10,
                                           extra={"kohya_note": 1}))
    state = read_train_state(tmp_path)
    assert state.extra == {"kohya_note": 1} and state.steps_per_epoch == 10
    with pytest.raises(StateError, match="trained at 10 steps per epoch, this preset gives 12"):
        fix_train_state(tmp_path, 12)


def test_find_latest_state_picks_most_steps_and_skips_partial_and_other_names(tmp_path):
    kohya_state(tmp_path / "ohwx-000001-state", 1, 10)
    kohya_state(tmp_path / "ohwx-step00000015-state", 1, 15)
    kohya_state(tmp_path / "ohwx2-state", 9, 90)  # another output name
    (tmp_path / ".ohwx-state.abc.tmp").mkdir()  # a save that never finished (older name)
    (tmp_path / "ohwx-state.fluxlora-12-abcd1234.tmp").mkdir()  # ... and today's
    (tmp_path / "ohwx-000002-state").mkdir()  # no train_state.json
    assert find_latest_state(tmp_path, "ohwx") == tmp_path / "ohwx-step00000015-state"
    assert find_latest_state(tmp_path / "missing", "ohwx") is None


def test_fix_state_cli_asks_when_the_file_cannot_tell_and_takes_the_answer(tmp_path):
    folder = kohya_state(tmp_path / "ohwx state", 2, 6)  # mid-epoch 2 of some run: the steps per epoch decide

    def cli(*args):
        return run_engine("fix-state", folder, *args)

    asked = cli()
    assert asked.returncode == 1
    assert asked.stderr.startswith(f"error: {folder}: kohya's file does not say how many steps an epoch has")
    assert "(--steps-per-epoch N or --preset FILE) or the true step (--step N)" in asked.stderr
    answered = cli("--step", "18")
    assert answered.returncode == 0 and answered.stdout.startswith(f"{folder}: current_step 6 -> 18: step 18 as you gave it")
    again = cli("--steps-per-epoch", "12")
    assert again.stdout.startswith(f"{folder}: nothing to repair: already repaired")

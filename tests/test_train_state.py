import json

import pytest

from engine.train_state import (
    StateError,
    TrainState,
    find_latest_state,
    fix_train_state,
    read_train_state,
    write_train_state,
)


def kohya_state(folder, epoch, step):
    folder.mkdir(parents=True)
    (folder / "train_state.json").write_text(json.dumps({"current_epoch": epoch, "current_step": step}))
    return folder


def test_kohya_state_is_repaired_with_backup(tmp_path):
    folder = kohya_state(tmp_path / "ohwx-000025-state", 25, 100)
    original = (folder / "train_state.json").read_bytes()
    report = fix_train_state(folder, steps_per_epoch=10)
    assert report.changed and (report.before.current_step, report.after.current_step) == (100, 250)
    assert report.summary() == (f"{folder}: current_step 100 -> 250: current_step 100 counts only the "
                                "last run; 25 completed epochs x 10 steps per epoch + 0 = 250 cumulative steps")
    assert (folder / "train_state.json.bak").read_bytes() == original
    data = json.loads((folder / "train_state.json").read_text())
    assert (data["current_epoch"], data["current_step"], data["steps_per_epoch"]) == (25, 250, 10)
    # Running it again changes nothing and keeps the first backup.
    again = fix_train_state(folder, steps_per_epoch=10)
    assert not again.changed and (folder / "train_state.json.bak").read_bytes() == original


@pytest.mark.parametrize("epoch, step, steps_per_epoch, fixed", [
    (15, 3750, 250, 3750),  # run 1: already cumulative
    (25, 2500, 250, 6250),  # run 2 as sd-scripts writes it
    (30, 1250, 250, 7500),  # run 3
    (25, 107, 10, 257),     # a step-state 7 steps into epoch 26 of a resumed run
])
def test_expected_cumulative_steps(tmp_path, epoch, step, steps_per_epoch, fixed):
    folder = kohya_state(tmp_path / "s-state", epoch, step)
    assert fix_train_state(folder, steps_per_epoch).after.current_step == fixed


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
    with pytest.raises(StateError, match="trained at 10 steps per epoch, not 12"):
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

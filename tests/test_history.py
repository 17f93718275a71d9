"""The loss history across Continue, read back from the runs' TensorBoard files."""

import pytest

from engine.trainer import continue_from_latest_state as continue_values
from engine.trainer import train
from engine.training.history import loss_history, smoothed
from tests.fixtures.datasets import tiny_training_values


def test_history_spans_a_continued_run(tiny_model_files, tmp_path):
    values = tiny_training_values(tiny_model_files, tmp_path, epoch=1, output_name="hist")
    first = train(values)
    assert first.status == "completed", first.message
    second = train(continue_values(dict(values, epoch=2)))
    assert second.status == "completed", second.message
    history = loss_history(tmp_path / "log", "hist")
    assert [step for step, _, _ in history] == list(range(1, 13))
    assert [lr for _, _, lr in history] == pytest.approx([1e-3] * 12)  # float32 in TensorBoard
    assert all(loss > 0 for _, loss, _ in history)
    assert [step for step, _, _ in loss_history(tmp_path / "log", "hist", before_step=6)] == list(range(1, 7))
    assert loss_history(tmp_path / "log", "his") == []  # another output name's runs are not mixed in


def test_smoothing_is_tensorboards_debiased_average():
    assert smoothed([1.0, 1.0, 1.0]) == [1.0, 1.0, 1.0]
    first, second = smoothed([2.0, 4.0], weight=0.5)
    assert (first, second) == (2.0, (0.5 * 0.5 * 2.0 + 0.5 * 4.0) / (1 - 0.25))

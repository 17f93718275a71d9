"""An open page that is not training costs little CPU: the status tick slows down between runs, and
Gradio's queue looks for events at its Windows pace everywhere."""

import time

import gradio as gr

from gui.parts.page import Page
from gui.parts.training_panel import IDLE_TICK_SECONDS, TICK_SECONDS, TrainingPanel
from gui.runner import TrainingRunner
from gui.store import WorkingPreset
from tests.fixtures.datasets import tiny_training_values


def test_gradio_queue_has_the_pace_settings_we_set(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXLORA_HOME", str(tmp_path))
    from gui.app import QUEUE_IDLE_PACE, build_app, start_queue

    demo = build_app()
    demo.queue()
    assert all(hasattr(demo._queue, name) for name in QUEUE_IDLE_PACE)  # a Gradio that renamed them fails here
    start_queue(demo)
    assert {name: getattr(demo._queue, name) for name in QUEUE_IDLE_PACE} == QUEUE_IDLE_PACE


def test_the_tick_is_fast_only_while_a_run_goes(tmp_path, monkeypatch, tiny_model_files):
    monkeypatch.setenv("FLUXLORA_HOME", str(tmp_path / "home"))
    runner = TrainingRunner()
    with gr.Blocks():
        panel = TrainingPanel(Page(WorkingPreset(), runner))
    assert panel.timer.value == TICK_SECONDS  # a new page shows the state at once

    first = panel._tick((-1, TICK_SECONDS))
    assert first[0] == (runner.revision, IDLE_TICK_SECONDS) and first[1].value == IDLE_TICK_SECONDS
    assert first[2] == "Idle. Fill in the tabs, then press Start."  # the status is rendered on the first tick
    assert panel._tick(first[0]) == [gr.skip()] * 8  # nothing new: nothing is sent

    values = tiny_training_values(tiny_model_files, tmp_path, images=2, epoch=2000, save_every_n_epochs=0)
    assert runner.start(values) is None  # as if another browser tab pressed Start
    try:
        going = panel._tick(first[0])
        assert going[0][1] == TICK_SECONDS and going[1].value == TICK_SECONDS
        assert panel._tick(going[0])[1] == gr.skip()  # the interval is sent only when it changes
    finally:
        runner.stop()
        deadline = time.monotonic() + 120
        while runner.running and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not runner.running
    stopped = panel._tick(going[0])
    assert stopped[0] == (runner.revision, IDLE_TICK_SECONDS) and stopped[1].value == IDLE_TICK_SECONDS
    assert stopped[0][0] > going[0][0] and stopped[2].startswith("**Stopped**")  # its last state, as the tick slows

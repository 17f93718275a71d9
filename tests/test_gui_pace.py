"""An open page that is not training costs little CPU: the status tick slows down between runs, and
Gradio's queue looks for events at its Windows pace everywhere."""

import time

import gradio as gr

from gui.parts.page import Page
from gui.parts.training_panel import IDLE_TICK_SECONDS, PLOT_SECONDS, TICK_SECONDS, Shown, TrainingPanel
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


def test_the_tick_leaves_the_answers_to_buttons_alone(tmp_path, monkeypatch):
    """Start's refusal or Check's problems stay on screen however often the tick comes."""
    monkeypatch.setenv("FLUXLORA_HOME", str(tmp_path))
    from gui.app import build_app

    config = build_app().config
    ids = {c["props"].get("elem_id"): c["id"] for c in config["components"]}
    timer = next(c["id"] for c in config["components"] if c["type"] == "timer")
    ticks = [d for d in config["dependencies"] if [timer, "tick"] in [list(t) for t in d["targets"]]]
    assert len(ticks) == 1
    assert ids["status-box"] in ticks[0]["outputs"]
    assert not {ids["run-message"], ids["vram-status"], ids["config-status"]} & set(ticks[0]["outputs"])


def sent(value) -> bool:
    return not (isinstance(value, dict) and value == gr.skip())


def wait_until(condition, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_tick_is_fast_only_while_a_run_goes_and_sends_only_what_changed(tmp_path, monkeypatch, tiny_model_files):
    monkeypatch.setenv("FLUXLORA_HOME", str(tmp_path / "home"))
    runner = TrainingRunner()
    with gr.Blocks():
        panel = TrainingPanel(Page(WorkingPreset(), runner))
    assert panel.timer.value == TICK_SECONDS  # a new page shows the state at once

    first = panel._tick(Shown())
    shown, timer, status = first[:3]
    assert (shown.revision, shown.interval) == (runner.revision, IDLE_TICK_SECONDS)
    assert timer.value == IDLE_TICK_SECONDS
    assert status == "Idle. Fill in the tabs, then press Start."
    assert not any(sent(value) for value in panel._tick(shown))  # nothing new: nothing is sent

    values = tiny_training_values(tiny_model_files, tmp_path, images=2, epoch=2000, save_every_n_epochs=0)
    assert runner.start(values) is None  # as if another browser tab pressed Start
    try:
        wait_until(lambda: len(runner.view.losses) >= 2)
        going = panel._tick(shown)
        assert going[0].interval == TICK_SECONDS and going[1].value == TICK_SECONDS
        assert sent(going[4]) and sent(going[6])  # a new run's plots are drawn at once
        wait_until(lambda: runner.revision > going[0].revision and len(runner.view.losses) > going[0].plots[1])
        later = panel._tick(going[0])
        assert not sent(later[1])  # the interval is sent only when it changes
        assert sent(later[2])  # the status line moves every tick
        assert not sent(later[4]) and not sent(later[6])  # the plots wait PLOT_SECONDS
        assert not sent(later[7])  # no new sample images: the gallery is left alone
        with monkeypatch.context() as clock:
            clock.setattr("gui.parts.training_panel.time.monotonic", lambda: going[0].plotted_at + PLOT_SECONDS)
            assert sent(panel._tick(later[0])[4])
    finally:
        runner.stop()
        wait_until(lambda: not runner.running)
    stopped = panel._tick(later[0])
    assert stopped[0].interval == IDLE_TICK_SECONDS and stopped[1].value == IDLE_TICK_SECONDS
    assert stopped[2].startswith("**Stopped**")  # the run's last state, as the tick slows
    assert sent(stopped[4])  # and its whole loss plot, at once

"""The page a person can trust (issue 16), in a real browser: Save never writes over what is not
ours, Start never silently replaces a finished run, one run per output folder, every problem at
once by field label, wrong files found by the preflight in seconds, stopped runs look stopped."""

import os
from pathlib import Path

from engine.preset import default_values, save_preset
from engine.trainer import train
from engine.training.lock import RunLock
from gui.store import SHIPPED_PRESETS, user_presets_dir
from tests.fixtures.browser import (field, fill, load_through_page, status_text, tab, wait_for_message,
                                    wait_for_status)
from tests.fixtures.datasets import tiny_training_values


def config_status(page, *words):
    try:
        return wait_for_status(page, *words, timeout=30000, box="#config-status")
    except Exception:
        raise AssertionError(f"config status is {status_text(page, '#config-status')!r}") from None


def dropdown_options(page):
    page.locator("#preset-pick input").click()
    page.wait_for_selector("[role=option]")
    options = page.locator("[role=option]").all_inner_texts()
    page.get_by_text("Configuration", exact=True).click()  # close the list without picking
    page.wait_for_selector("[role=option]", state="detached")
    return options


def test_save_never_writes_over_a_shipped_preset_or_a_kohya_config(page, tmp_path):
    shipped = SHIPPED_PRESETS / "flux1-dev-12gb.json"
    original = shipped.read_bytes()
    page.locator("#preset-pick input").click()
    page.get_by_role("option", name="flux1-dev-12gb (shipped)").click()
    config_status(page, "flux1-dev-12gb.json")
    fill(page, "output_name", "ohwx_lora")
    page.locator("#save").click()
    message = config_status(page, "Not saved")
    assert "flux1-dev-12gb.json is a shipped preset" in message and "Save as" in message
    page.screenshot(path=str(tmp_path / "save-over-shipped-refused.png"), full_page=True)
    assert shipped.read_bytes() == original
    page.locator("#save-as-name input").fill("ohwx 12gb")
    page.locator("#save-as").click()
    config_status(page, "Saved")
    assert "ohwx 12gb" in dropdown_options(page)  # listed at once, no restart

    kohya = tmp_path / "kohya config.json"
    kohya.write_text('{"LoRA_type": "Flux1", "flux1_checkbox": true, "noise_offset": 0.1, "epoch": "4"}')
    before = kohya.read_bytes()
    load_through_page(page, kohya)
    page.locator("#save").click()
    assert "is a kohya\\_ss config" in page.locator("#config-status").inner_html() or \
        "is a kohya_ss config" in config_status(page, "Not saved")
    assert kohya.read_bytes() == before
    page.screenshot(path=str(tmp_path / "save-over-kohya-refused.png"), full_page=True)

    save_preset(default_values(), user_presets_dir() / "made elsewhere.json")
    page.reload()
    page.wait_for_selector("#opt-output_name input")
    page.wait_for_timeout(500)
    assert "made elsewhere" in dropdown_options(page)  # the list is read again on every page load


def test_opening_the_preset_list_without_picking_keeps_your_edits(page):
    page.locator("#preset-pick input").click()
    page.get_by_role("option", name="flux1-dev-12gb (shipped)").click()
    config_status(page, "flux1-dev-12gb.json")
    fill(page, "output_name", "my_edit")
    for _ in range(2):
        dropdown_options(page)  # open the list, close it without a pick: Gradio calls that an input
    page.locator("#check").click()
    wait_for_message(page, "Fix these", "Ready to start")
    page.wait_for_timeout(1000)  # a reload started by the closing would have landed by now
    assert field(page, "output_name").input_value() == "my_edit"


def test_start_over_a_finished_run_offers_continue_new_name_or_overwrite(page, tmp_path, tiny_model_files):
    values = tiny_training_values(tiny_model_files, tmp_path, images=2, epoch=2)
    assert train(values).status == "completed"
    out = Path(values["output_dir"])
    before = sorted(p.name for p in out.iterdir())
    preset = tmp_path / "tiny.json"
    save_preset(values, preset)
    load_through_page(page, preset)
    page.locator("#start").click()
    message = wait_for_message(page, "already has a run")
    assert "Continue" in message and "Start as tiny-2" in message and "Overwrite and start" in message
    assert page.locator("#start-new-name").inner_text() == "Start as tiny-2"
    assert page.locator("#overwrite-start").is_visible()
    page.screenshot(path=str(tmp_path / "start-over-finished-run.png"), full_page=True)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing touched
    page.locator("#start-new-name").click()
    assert "trained to step 8 (epoch 2)" in wait_for_status(page, "Finished", "failed")
    assert field(page, "output_name").input_value() == "tiny-2"
    # Continue the new run to 3 epochs: every epoch stays a numbered file.
    tab(page, "Parameters")
    fill(page, "epoch", 3)
    page.locator("#continue").click()
    wait_for_message(page, "Continued from")
    assert "trained to step 12 (epoch 3)" in wait_for_status(page, "step 12", "failed")
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if n.startswith("tiny-2-0")] == [
        "tiny-2-000001.safetensors", "tiny-2-000002.safetensors", "tiny-2-000003.safetensors"]
    assert set(before) <= set(names)  # the first run is still whole
    page.screenshot(path=str(tmp_path / "continued-under-new-name.png"), full_page=True)


def test_a_second_run_into_a_busy_folder_names_the_first(page, tmp_path, tiny_model_files):
    values = tiny_training_values(tiny_model_files, tmp_path, images=2, epoch=1)
    preset = tmp_path / "tiny.json"
    save_preset(values, preset)
    load_through_page(page, preset)
    with RunLock(values["output_dir"], "first_run"):
        page.locator("#start").click()
        message = wait_for_message(page, "Fix these")
    assert f"another training run is writing into {values['output_dir']} (process {os.getpid()}" in message
    assert "training first_run); wait for it to finish" in message.replace("\\", "")
    page.screenshot(path=str(tmp_path / "busy-output-folder.png"), full_page=True)


def test_out_of_range_numbers_come_back_all_at_once_by_label(page, tmp_path, tiny_model_files):
    preset = tmp_path / "tiny.json"
    save_preset(tiny_training_values(tiny_model_files, tmp_path), preset)
    load_through_page(page, preset)
    tab(page, "Parameters")
    fill(page, "network_dim", 0)
    fill(page, "seed", -5)
    fill(page, "max_resolution", "700,700")
    page.locator("#start").click()
    message = wait_for_message(page, "Fix these")
    for expected in ("Network rank (dim) (network_dim): 0 is not allowed, expected a whole number from 1 to 1024",
                     "Seed (seed): -5 is not allowed",
                     "Max resolution (max_resolution): '700,700' is not allowed"):
        assert expected in message
    assert page.locator(".toast-body").count() == 0  # no Gradio error toast
    assert "--" not in message  # no CLI flags
    page.screenshot(path=str(tmp_path / "all-problems-by-label.png"), full_page=True)
    tab(page, "Utilities")
    page.locator("#fix-preview").click()  # other buttons reading the form still work
    page.wait_for_function("document.querySelector('#fix-status').innerText.includes('Give the state folder')")


def test_check_finds_a_wrong_file_at_once_and_a_stopped_run_looks_stopped(page, tmp_path, tiny_model_files):
    preset = tmp_path / "tiny.json"
    save_preset(tiny_training_values(tiny_model_files, tmp_path, images=2, epoch=2000, save_every_n_epochs=0,
                                     pretrained_model_name_or_path=tiny_model_files["ae"]), preset)
    load_through_page(page, preset)
    page.locator("#check").click()
    message = wait_for_message(page, "Fix these")
    assert ("FLUX.1 model file (pretrained_model_name_or_path): ae.safetensors is the FLUX VAE (ae.safetensors), "
            "not a FLUX.1 transformer") in message
    page.screenshot(path=str(tmp_path / "check-wrong-file.png"), full_page=True)
    fill(page, "pretrained_model_name_or_path", tiny_model_files["pretrained_model_name_or_path"])
    page.locator("#check").click()
    assert "disk: this run writes about" in wait_for_message(page, "Ready to start")
    page.locator("#start").click()
    wait_for_status(page, "Training —")
    page.locator("#stop").click()
    status = wait_for_status(page, "Stopped", "failed")
    assert status.startswith("Stopped: stopped at step")
    assert "— stopped" in page.locator("#progress").inner_text()
    colour = page.locator("#progress div", has_text="stopped").last.evaluate("e => getComputedStyle(e).color")
    assert colour == "rgb(179, 89, 0)"  # amber, not a finished run's green
    page.screenshot(path=str(tmp_path / "stopped-looks-stopped.png"), full_page=True)


def test_page_messages_name_no_command_line_flags(tmp_path):
    from gui import actions
    from tests.fixtures.datasets import write_images

    photos = tmp_path / "photos"
    write_images(photos, 1)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "something.txt").write_text("x")
    values = dict(default_values(), dataset_instance_prompt="ohwx", dataset_class_prompt="man",
                  dataset_images_dir=str(photos), dataset_dest_dir=str(dest))
    message, _ = actions.prepare(values, overwrite=False, tag=False, progress=lambda *a, **k: None)
    assert "already exists and is not empty" in message and "--" not in message
    assert "Rebuild an existing destination" in message
    from engine.train_state import ASK_FOR_STEP

    assert "--" not in actions.problem_list("Fix these", [f"resume: x-state: current_step is 0; {ASK_FOR_STEP}"])

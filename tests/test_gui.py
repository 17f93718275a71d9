"""The GUI in a real browser (Debian's Chromium through Playwright), on the tiny models.
The page fixtures and the helpers that act on it are in tests/fixtures/browser.py."""

import json

from engine.preset import load_preset, save_preset
from gui.parts.training_panel import IDLE_TICK_SECONDS, TICK_SECONDS
from tests.fixtures.browser import (browser_candidates, field, fill, line_pixels, load_through_page, tab,
                                    wait_for_line_pixels, wait_for_message, wait_for_status)
from tests.fixtures.datasets import tiny_training_values, write_images


def test_chrome_and_edge_are_found_on_windows(tmp_path, monkeypatch):
    edge = tmp_path / "Program Files (x86)" / "Microsoft" / "Edge" / "Application" / "msedge.exe"
    edge.parent.mkdir(parents=True)
    edge.write_bytes(b"")
    for name in ("FLUXLORA_CHROMIUM", "PROGRAMFILES", "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROGRAMFILES(X86)", str(tmp_path / "Program Files (x86)"))
    assert str(edge) in browser_candidates()
    chrome = tmp_path / "Local" / "Google" / "Chrome" / "Application" / "chrome.exe"
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    assert str(chrome) in browser_candidates()


def test_every_tab_shows_its_options(page, tmp_path):
    expected = {"Model": "FLUX.1 model file", "Folders": "Regularisation folder", "Parameters": "Network rank (dim)",
                "Dataset Preparation": "Instance prompt", "Utilities": "Repair a kohya_ss"}
    for name, label in expected.items():
        tab(page, name)
        assert page.get_by_text(label).first.is_visible(), name
        page.screenshot(path=str(tmp_path / f"tab-{name.replace(' ', '-').lower()}.png"), full_page=True)
    assert len(list(tmp_path.glob("tab-*.png"))) == 5
    assert line_pixels(page.locator("#loss-plot").screenshot()) < 60  # nothing trained yet: the legend's rings only


def test_kohya_state_repair_shows_before_and_after(page, tmp_path):
    state = tmp_path / "ohwx-000025-state"
    state.mkdir()
    (state / "train_state.json").write_text('{"current_epoch": 25, "current_step": 100}')
    tab(page, "Utilities")
    page.locator("#fix-dir input").fill(str(state))
    page.locator("#fix-steps input").fill("10")
    page.locator("#fix-preview").click()
    page.wait_for_function("document.querySelector('#fix-status').innerText.includes('Would repair')")
    rows = page.locator("#fix-status tr").all_inner_texts()
    assert [row.split() for row in rows[1:]] == [["before", "25", "100"], ["after", "25", "250"]]
    assert json.loads((state / "train_state.json").read_text())["current_step"] == 100  # a preview writes nothing
    page.locator("#fix-apply").click()
    page.wait_for_function("document.querySelector('#fix-status').innerText.includes('Repaired')")
    assert json.loads((state / "train_state.json").read_text())["current_step"] == 250
    assert json.loads((state / "train_state.json.bak").read_text())["current_step"] == 100
    page.screenshot(path=str(tmp_path / "state-repaired.png"), full_page=True)
    page.locator("#fix-apply").click()  # a second Repair leaves it alone
    page.wait_for_function("document.querySelector('#fix-status').innerText.includes('Nothing to repair')")
    assert "already repaired" in page.locator("#fix-status").inner_text()
    # A file that cannot tell its step asks for it, and takes the answer.
    unclear = tmp_path / "x-state"
    unclear.mkdir()
    (unclear / "train_state.json").write_text('{"current_epoch": 1, "current_step": 0}')
    page.locator("#fix-dir input").fill(str(unclear))
    page.locator("#fix-preview").click()
    page.wait_for_function("document.querySelector('#fix-status').innerText.includes('cannot tell')")
    assert "Fill in True step" in page.locator("#fix-status").inner_text()
    page.locator("#fix-true-step input").fill("7")
    page.locator("#fix-apply").click()
    page.wait_for_function("document.querySelector('#fix-status').innerText.includes('Repaired')")
    assert json.loads((unclear / "train_state.json").read_text())["current_step"] == 7


def test_save_reload_and_load_give_identical_values(page, tmp_path):
    fill(page, "output_name", "zoe_lora")
    fill(page, "train_data_dir", r"C:\Datasets\Zoë\img")
    tab(page, "Parameters")
    fill(page, "epoch", 7)
    fill(page, "learning_rate", 0.0003)
    preset = tmp_path / "zoe preset.json"
    page.locator("#preset-path input, #preset-path textarea").first.fill(str(preset))
    page.locator("#save").click()
    page.wait_for_function("document.querySelector('#config-status').innerText.includes('Saved')")
    saved = load_preset(preset).values
    assert (saved["output_name"], saved["epoch"], saved["learning_rate"], saved["train_data_dir"]) == (
        "zoe_lora", 7, 0.0003, r"C:\Datasets\Zoë\img")

    page.reload()
    page.wait_for_selector("#opt-output_name input")
    page.wait_for_function("document.querySelector('#opt-output_name input').value === 'zoe_lora'")
    assert field(page, "train_data_dir").input_value() == r"C:\Datasets\Zoë\img"

    fill(page, "output_name", "something else")
    load_through_page(page, preset)
    assert field(page, "output_name").input_value() == "zoe_lora"
    tab(page, "Parameters")
    assert field(page, "epoch").input_value() == "7"
    page.screenshot(path=str(tmp_path / "after-load.png"), full_page=True)


def test_shipped_preset_loads_from_the_dropdown(page):
    page.locator("#preset-pick input").click()
    page.get_by_role("option", name="flux1-dev-12gb (shipped)").click()
    page.wait_for_function("document.querySelector('#config-status').innerText.includes('flux1-dev-12gb.json')")
    assert field(page, "blocks_to_swap").input_value() == "18"
    assert page.locator("#preset-path input").input_value().endswith("flux1-dev-12gb.json")


def test_blocks_to_swap_takes_auto_and_the_estimate_says_when_it_is_chosen(page, tmp_path):
    fill(page, "blocks_to_swap", "auto")
    page.locator("#estimate").click()
    wait_for_status(page, "Blocks to swap is auto", timeout=60000, box="#vram-status")
    assert "--vram-gib N" in page.locator("#vram-status").inner_text()  # no CUDA GPU here
    fill(page, "blocks_to_swap", "18")
    page.locator("#estimate").click()
    wait_for_status(page, "Predicted peak", timeout=60000, box="#vram-status")
    assert "system RAM needed: about" in page.locator("#vram-status").inner_text()
    preset = tmp_path / "auto.json"
    fill(page, "blocks_to_swap", "Auto")
    page.locator("#preset-path input, #preset-path textarea").first.fill(str(preset))
    page.locator("#save").click()
    page.wait_for_function("document.querySelector('#config-status').innerText.includes('Saved')")
    assert load_preset(preset).values["blocks_to_swap"] == "auto"


def test_kohya_config_loads_with_unknown_keys_reported(page, tmp_path):
    config = tmp_path / "kohya.json"
    config.write_text(json.dumps({"LoRA_type": "Flux1", "flux1_checkbox": True, "epoch": "12", "clip_skip": 1,
                                  "output_name": "from_kohya", "network_dim": 32, "fp8_base": False,
                                  "train_t5xxl": True, "max_train_epochs": 20,
                                  "caption_extension": ".txt"}))  # kohya_ss always writes it; later tests tag .txt
    message = load_through_page(page, config)
    assert "Loaded kohya_ss config" in message
    warning = page.locator("#config-status h3").first
    assert warning.inner_text() == "⚠ Changes training in kohya, not supported here" and warning.is_visible()
    assert "train_t5xxl = True: kohya trains a T5-XXL LoRA too; FluxLoRA keeps T5 frozen" in message
    assert "Reinterpreted (the value FluxLoRA uses):" in message
    assert "max_train_epochs = 20: epoch 20 and max_train_steps 0" in message
    assert "fp8_base_unet = False: not in the file; kohya's default" in message
    assert "Not used by FluxLoRA (no effect on training):" in message
    assert "clip_skip, flux1_checkbox (FluxLoRA always trains FLUX.1)" in message
    assert "epoch: '12' read as 12" in message
    assert field(page, "output_name").input_value() == "from_kohya"
    assert field(page, "epoch").input_value() == "20"
    assert field(page, "fp8_base_unet").is_checked() is False
    page.screenshot(path=str(tmp_path / "kohya-config-report.png"), full_page=True)
    bad = tmp_path / "bad.json"
    bad.write_text('{"epoch": 0}')
    assert "Epochs (epoch): 0 is not allowed" in load_through_page(page, bad)


def test_prepare_tag_and_fill_in(page, tmp_path, tiny_wd14_dir):
    photos = tmp_path / "my photos"
    write_images(photos, 2, captions=False)
    dest = tmp_path / "lora dest"
    tab(page, "Dataset Preparation")
    fill(page, "dataset_instance_prompt", "ohwx")
    fill(page, "dataset_class_prompt", "man")
    fill(page, "dataset_images_dir", photos)
    fill(page, "dataset_dest_dir", dest)
    fill(page, "tagger_model_dir", tiny_wd14_dir)
    page.locator("#one-click").click()
    page.wait_for_function("document.querySelector('#prep-status').innerText.includes('Tagged')", timeout=60000)
    assert "Tagged 2" in page.locator("#prep-status").inner_text()
    assert (dest / "img/10_ohwx man/photo 0.txt").read_text().startswith("ohwx, ")
    tab(page, "Folders")
    assert field(page, "train_data_dir").input_value() == str(dest / "img")
    assert field(page, "output_dir").input_value() == str(dest / "model")
    page.screenshot(path=str(tmp_path / "folders-filled.png"), full_page=True)


def test_training_runs_to_the_end_with_a_loss_plot(page, tmp_path, tiny_model_files):
    preset = tmp_path / "tiny.json"
    save_preset(tiny_training_values(tiny_model_files, tmp_path, epoch=3), preset)
    load_through_page(page, preset)
    page.locator("#start").click()
    status = wait_for_status(page, "Finished", "failed")
    assert "Finished" in status and "trained to step 18 (epoch 3)" in status
    assert "18 / 18 (100%)" in page.locator("#progress").inner_text()
    assert (tmp_path / "out/tiny.safetensors").is_file()
    page.wait_for_function("document.querySelector('#loss-plot canvas, #loss-plot svg') !== null")
    assert wait_for_line_pixels(page, 300) > 300  # the drawn loss line (none when empty)
    assert "epoch 3 done" in page.locator("#log-tail textarea").input_value()
    page.screenshot(path=str(tmp_path / "finished-run.png"), full_page=True)


def test_stop_saves_state_and_second_start_is_refused(page, tmp_path, tiny_model_files):
    preset = tmp_path / "long.json"
    save_preset(tiny_training_values(tiny_model_files, tmp_path, epoch=2000, save_every_n_epochs=0), preset)
    load_through_page(page, preset)
    page.locator("#start").click()
    wait_for_status(page, "Training —")
    page.locator("#start").click()
    assert "A training run is already going" in wait_for_message(page, "already going")
    page.wait_for_timeout(1000 * TICK_SECONDS + 500)  # a timer tick later (a run goes) the refusal is still there
    assert "already going" in page.locator("#run-message").inner_text()
    page.locator("#stop").click()
    assert "Stopping at the next step" in wait_for_message(page, "Stopping")
    status = wait_for_status(page, "Stopped", "failed")
    assert "Stopped" in status and "tiny-state" in status
    assert (tmp_path / "out/tiny-state/train_state.json").is_file()
    page.screenshot(path=str(tmp_path / "stopped-run.png"), full_page=True)


def test_problems_and_engine_errors_show_in_the_page(page, tmp_path, tiny_model_files):
    preset = tmp_path / "broken.json"
    values = tiny_training_values(tiny_model_files, tmp_path, pretrained_model_name_or_path=str(tmp_path / "nope.safetensors"))
    save_preset(values, preset)
    load_through_page(page, preset)
    fill(page, "epoch", "")
    page.locator("#start").click()
    message = wait_for_message(page, "Fix these before starting")
    assert f"{tmp_path / 'nope.safetensors'}: file not found" in message.replace("\\", "")
    assert "Epochs (epoch): empty" in message.replace("\\", "")  # both problems at once, by field label
    fill(page, "epoch", 2)
    page.wait_for_timeout(1000 * IDLE_TICK_SECONDS + 500)  # the problems stay on screen past a timer tick
    assert "Fix these before starting" in page.locator("#run-message").inner_text()
    # The VAE given as the transformer: the preflight names it at Start, before anything loads.
    fill(page, "pretrained_model_name_or_path", tiny_model_files["ae"])
    page.locator("#start").click()
    message = wait_for_message(page, "is the FLUX VAE")
    assert "FLUX.1 model file (pretrained_model_name_or_path): ae.safetensors is the FLUX VAE" in message
    page.screenshot(path=str(tmp_path / "failed-run.png"), full_page=True)
    # The page recovers: a good run starts again.
    fill(page, "pretrained_model_name_or_path", tiny_model_files["pretrained_model_name_or_path"])
    page.locator("#start").click()
    assert "trained to step 12" in wait_for_status(page, "Finished")

"""The pictures in the page, in a real browser on the tiny models: sample images while training,
the dataset gallery with an edited caption that the next run trains on, the model-file lines,
the numbers before Start, and the comparison grid."""

from pathlib import Path

from engine.preset import save_preset
from tests.fixtures.browser import load_through_page, tab, wait_for_status
from tests.fixtures.datasets import tiny_training_values

PROMPTS = "ohwx man on a beach --w 64 --h 64 --s 2 --d 7\nohwx man, portrait --w 64 --h 64 --s 2"


def gallery_images(page, selector):
    return page.locator(f"{selector} img").count()


def test_samples_show_and_an_edited_caption_is_trained_next(page, tmp_path, tiny_model_files):
    preset = tmp_path / "pictures.json"
    save_preset(tiny_training_values(tiny_model_files, tmp_path, epoch=2, sample_prompts=PROMPTS,
                                     sample_every_n_epochs=1, save_state_on_train_end=False), preset)
    load_through_page(page, preset)
    tab(page, "Model")
    page.wait_for_function("document.querySelector('#about-pretrained_model_name_or_path').innerText"
                           ".includes('transformer, bf16, 1 + 1 blocks')")
    assert "FLUX VAE" in page.locator("#about-ae").inner_text()
    page.screenshot(path=str(tmp_path / "model-lines.png"), full_page=True)

    page.locator("#estimate").click()
    page.wait_for_function("document.querySelector('#vram-status').innerText.includes('steps per epoch')")
    numbers = page.locator("#vram-status").inner_text()
    assert "6 steps per epoch" in numbers and "= 12 steps" in numbers and "64x64: 6" in numbers

    page.locator("#start").click()
    assert "trained to step 12 (epoch 2)" in wait_for_status(page, "Finished", "failed")
    page.wait_for_function("document.querySelectorAll('#sample-gallery img').length === 4")
    sample_files = sorted(p.name for p in (tmp_path / "out" / "sample").iterdir())
    assert [name.split("_")[1:3] for name in sample_files] == [["e000001", "00"], ["e000001", "01"],
                                                               ["e000002", "00"], ["e000002", "01"]]
    assert "epoch 2 · prompt 1" in page.locator("#sample-gallery").inner_text()
    page.locator("#sample-gallery").scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "samples-in-page.png"), full_page=True)

    tab(page, "Dataset gallery")
    page.locator("#gallery-refresh").click()
    page.wait_for_function("document.querySelectorAll('#dataset-gallery img').length === 3")
    assert "2_ohwx man" in page.locator("#gallery-summary").inner_text()
    page.locator("#dataset-gallery img").first.click()
    caption_box = page.locator("#caption-edit textarea")
    page.wait_for_function("document.querySelector('#caption-edit textarea').value === 'ohwx man, photo 0'")
    caption_box.fill("ohwx man, red hat")
    page.locator("#caption-save").click()
    page.wait_for_function("document.querySelector('#gallery-status').innerText.includes('Saved')")
    caption_file = tmp_path / "data" / "img" / "2_ohwx man" / "photo 0.txt"
    assert caption_file.read_bytes() == b"ohwx man, red hat"
    page.screenshot(path=str(tmp_path / "gallery-edited.png"), full_page=True)

    page.locator("#start").click()  # the same name again: the page offers to overwrite the finished run
    page.locator("#overwrite-start").click()
    wait_for_status(page, "Started", box="#run-message", timeout=30000)
    second_log = wait_for_second_run_log(page, tmp_path / "log")
    assert "text cache: 1 computed, 2 reused" in second_log  # only the edited caption is encoded again
    assert "Finished" in wait_for_status(page, "Finished", "failed")


def wait_for_second_run_log(page, log_dir: Path, timeout_ms=120000) -> str:
    """The second run's text log once it has finished (the page's log tail shows only its last lines)."""
    for _ in range(timeout_ms // 250):
        logs = sorted(log_dir.glob("tiny_*.log"))
        if len(logs) == 2 and "trained to step" in logs[-1].read_text(encoding="utf-8"):
            return logs[-1].read_text(encoding="utf-8")
        page.wait_for_timeout(250)
    raise AssertionError(f"no finished second run log in {log_dir}")


def test_compare_tab_makes_one_grid_of_the_runs_epochs(page, tmp_path, tiny_model_files):
    preset = tmp_path / "compare.json"
    save_preset(tiny_training_values(tiny_model_files, tmp_path, epoch=3, output_name="cmp",
                                     save_state_on_train_end=False), preset)
    load_through_page(page, preset)
    page.locator("#start").click()
    # the page may still show the previous test's finished run: wait for this one's own end
    assert "trained to step 18 (epoch 3)" in wait_for_status(page, "trained to step 18", "failed")
    tab(page, "Compare epochs")
    page.locator("#compare-list").click()
    page.wait_for_function("document.querySelector('#compare-status').innerText.includes('3 LoRA files found')")
    assert page.locator("#compare-loras input[type=checkbox]:checked").count() == 3
    page.locator("#compare-prompts textarea").fill("ohwx man --w 64 --h 64 --s 2\nohwx man, smiling --w 64 --h 64 --s 2")
    page.locator("#compare-run").click()
    page.wait_for_function("document.querySelector('#compare-status').innerText.includes('saved as')", timeout=120000)
    assert "4 rows x 2 prompts" in page.locator("#compare-status").inner_text()
    assert page.locator("#compare-grid img").count() == 1
    grids = list((tmp_path / "out" / "sample").glob("cmp_compare_*.png"))
    assert len(grids) == 1
    page.screenshot(path=str(tmp_path / "compare-grid.png"), full_page=True)

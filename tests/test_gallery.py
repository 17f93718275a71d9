"""The dataset gallery's engine side: folders and repeats, skipped images, captions, tags, thumbnails."""

import pytest
from PIL import Image

from engine.dataset.gallery import edit_tag_everywhere, save_caption, tag_counts, view_dataset
from engine.dataset.layout import DatasetError
from engine.dataset.thumbnails import thumbnail
from engine.preset import default_values
from engine.training.plan import plan_run
from tests.fixtures.datasets import write_images


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "img ü"
    write_images(root / "10_ohwx man", 3)
    write_images(root / "2_style", 2, size=(96, 64), captions=False, prefix="wide")
    (root / "10_ohwx man" / "broken.png").write_bytes(b"not a png at all")
    (root / "10_ohwx man" / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(root / "2_style" / "anim.gif")
    (root / "10_ohwx man" / "photo 1.txt").write_bytes("\ufeffohwx man, smiling,  photo 1\r\nsecond line\r\n".encode())
    return root


def test_view_lists_folders_images_and_what_is_skipped(dataset):
    view = view_dataset(dataset, ".txt")
    assert [(f.name, f.repeats, f.images, f.skipped, f.captioned, f.seen_per_epoch) for f in view.folders] == [
        ("10_ohwx man", 10, 3, 2, 3, 30), ("2_style", 2, 2, 0, 0, 4)]
    assert [(item.image_path.name, item.caption, item.has_caption_file, item.size) for item in view.items] == [
        ("photo 0.png", "ohwx man, photo 0", True, (64, 64)),
        ("photo 1.png", "ohwx man, smiling,  photo 1", True, (64, 64)),  # the first line only, as sd-scripts
        ("photo 2.png", "ohwx man, photo 2", True, (64, 64)),
        ("wide 0.png", "style", False, (96, 64)), ("wide 1.png", "style", False, (96, 64))]
    assert [(path.name, reason.split(" (")[0]) for path, reason in view.skipped] == [
        ("broken.png", "not an image file"), ("empty.jpg", "empty file"),
        ("anim.gif", ".gif is not a training image type")]
    assert [len(view.page(n, 2)) for n in range(view.pages(2))] == [2, 2, 1]


def test_caption_edits_are_written_atomically_without_bom(dataset):
    view = view_dataset(dataset, ".txt")
    wide = view.items[3]
    assert save_caption(wide, "  a wide picture\n") == "a wide picture"
    assert wide.caption_path.read_bytes() == b"a wide picture"
    assert not [p for p in wide.caption_path.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    assert view_dataset(dataset, ".txt").items[3].caption == "a wide picture"
    with pytest.raises(DatasetError, match="wide 0.txt: an empty caption"):
        save_caption(wide, " \n ")


def test_tag_counts_remove_and_replace_everywhere(dataset):
    view = view_dataset(dataset, ".txt")
    assert tag_counts(view.items)[:2] == [("ohwx man", 3), ("photo 0", 1)]
    assert edit_tag_everywhere(view.items, "ohwx man", "sks person") == 3
    view = view_dataset(dataset, ".txt")
    assert [item.caption for item in view.items[:3]] == [
        "sks person, photo 0", "sks person, smiling, photo 1", "sks person, photo 2"]  # tags re-joined
    assert edit_tag_everywhere(view.items, "smiling") == 1
    assert (dataset / "10_ohwx man" / "photo 1.txt").read_text(encoding="utf-8") == "sks person, photo 1"
    with pytest.raises(DatasetError, match="one tag, without commas"):
        edit_tag_everywhere(view.items, "photo 0", "a, b")


def test_thumbnails_are_cached_per_file_version(dataset, tmp_path):
    image = dataset / "2_style" / "wide 0.png"
    first = thumbnail(image, tmp_path / "thumbs", side=32)
    assert Image.open(first).size == (32, 21)
    assert thumbnail(image, tmp_path / "thumbs", side=32) == first
    Image.new("RGB", (64, 64), "red").save(image)
    assert thumbnail(image, tmp_path / "thumbs", side=32) != first


def test_run_plan_counts_as_training_does(dataset):
    values = dict(default_values(), train_data_dir=str(dataset), max_resolution="128,128", min_bucket_reso=64,
                  train_batch_size=2, epoch=3)
    plan = plan_run(values)
    assert plan.folders == [("img ü/10_ohwx man", 3, 30), ("img ü/2_style", 2, 4)]
    assert plan.buckets == {(64, 64): 34}  # 96x64 keeps its size (no upscale) and is floored to 64x64
    assert plan.seen_per_epoch == 34 and plan.steps_per_epoch == 17
    assert plan.total_steps == 3 * plan.steps_per_epoch and plan.epochs == 3
    assert [line.split(":")[0] for line in plan.skipped] == ["skipping broken.png", "skipping empty.jpg"]


def test_run_plan_agrees_with_the_runs_own_count_with_regularisation(tmp_path):
    from engine.training.data import load_samples, steps_per_epoch_for

    write_images(tmp_path / "img" / "3_ohwx man", 3, size=(128, 64))
    write_images(tmp_path / "img" / "1_ohwx man", 2, size=(64, 64))
    write_images(tmp_path / "reg" / "1_man", 5, size=(64, 128), prefix="reg")
    values = dict(default_values(), train_data_dir=str(tmp_path / "img"), reg_data_dir=str(tmp_path / "reg"),
                  max_resolution="128,128", min_bucket_reso=64, train_batch_size=2, epoch=2)
    plan = plan_run(values)
    samples = load_samples(values)
    assert plan.steps_per_epoch == steps_per_epoch_for(values) and plan.total_steps == 2 * plan.steps_per_epoch
    assert plan.seen_per_epoch == sum(sample.repeats for sample in samples) == 22  # 11 training + 11 regularisation
    assert plan.buckets == {(64, 64): 2, (64, 128): 11, (128, 64): 9}

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.dataset.images import BadImageError, open_image_rgb
from engine.dataset.layout import DatasetError, count_steps, read_caption, scan_train_dir
from engine.dataset.prepare import PrepareError, prepare_dataset
from engine.dataset.tagger import TaggerError, load_wd14, tag_folder
from engine.preset import default_values, load_preset, save_preset

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def solid(path, size=(40, 40), color=(255, 0, 0), mode="RGB", **save):
    Image.new(mode, size, color).save(path, **save)
    return path


def users_photos(folder: Path) -> dict[str, str | None]:
    """Every kind of file users really have; value = expected rejection reason (None = good)."""
    folder.mkdir(parents=True)
    solid(folder / "cmyk.jpg", mode="CMYK", color=(0, 255, 255, 0))
    solid(folder / "grey.jpg", mode="L", color=128)
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    rgba.save(folder / "transparent.png")
    Image.new("I;16", (40, 40), 65535).save(folder / "sixteen bit.png")
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "animated.webp", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when shown
    Image.new("RGB", (40, 20), (0, 255, 0)).save(folder / "rotated.jpg", exif=exif)
    solid(folder / "Zoë am Strand 1.png")
    (folder / "Zoë am Strand 1.txt").write_bytes("\ufeffzoe, beach\r\n".encode("utf-8"))
    (folder / "empty.jpg").write_bytes(b"")
    good_jpeg = solid(folder / "tmp.jpg", size=(64, 64)).read_bytes()
    (folder / "tmp.jpg").unlink()
    (folder / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (folder / "notes.jpg").write_text("this is not a picture")
    Image.new("1", (9000, 8000)).save(folder / "bomb.png")
    (folder / "desktop.ini").write_text("junk")
    return {"cmyk.jpg": None, "grey.jpg": None, "transparent.png": None, "sixteen bit.png": None,
            "animated.gif": None, "animated.webp": None, "rotated.jpg": None, "Zoë am Strand 1.png": None,
            "empty.jpg": "empty file (0 bytes)", "truncated.jpg": "damaged or truncated image",
            "notes.jpg": "not an image file", "bomb.png": "too large (9000x8000 pixels; at most 64 MP)"}


def test_images_users_really_have(tmp_path):
    expected = users_photos(tmp_path / "photos")
    for name, reason in expected.items():
        if reason is None:
            image = open_image_rgb(tmp_path / "photos" / name)
            assert image.mode == "RGB", name
        else:
            with pytest.raises(BadImageError) as caught:
                open_image_rgb(tmp_path / "photos" / name)
            assert str(caught.value).startswith(reason), name
    assert open_image_rgb(tmp_path / "photos/rotated.jpg").size == (20, 40)  # upright
    assert open_image_rgb(tmp_path / "photos/transparent.png").getpixel((0, 0)) == (255, 255, 255)
    assert open_image_rgb(tmp_path / "photos/animated.gif").getpixel((0, 0)) == (255, 0, 0)
    assert open_image_rgb(tmp_path / "photos/animated.webp").getpixel((0, 0))[0] > 200
    assert open_image_rgb(tmp_path / "photos/sixteen bit.png").getpixel((0, 0)) == (255, 255, 255)


def test_prepare_builds_the_layout_and_reports_rejects(tmp_path):
    expected = users_photos(tmp_path / "photos")
    solid_reg = tmp_path / "reg photos"
    solid_reg.mkdir()
    solid(solid_reg / "man 1.png")
    result = prepare_dataset("ohwx", "man", tmp_path / "photos", 10, tmp_path / "my lora", solid_reg, 1)
    dest = tmp_path / "my lora"
    assert result.copy_info == {"train_data_dir": str(dest / "img"), "reg_data_dir": str(dest / "reg"),
                                "output_dir": str(dest / "model"), "logging_dir": str(dest / "log")}
    assert sorted(p.name for p in dest.iterdir()) == ["img", "log", "model", "reg"]
    folder = dest / "img" / "10_ohwx man"
    good = sorted(name.replace(".gif", ".png") for name, reason in expected.items() if reason is None)
    assert sorted(p.name for p in folder.iterdir()) == sorted(good + ["Zoë am Strand 1.txt"])
    assert sorted(result.rejected) == sorted((name, reason) for name, reason in
                                             ((n, str(open_error(tmp_path / "photos" / n))) for n, r in expected.items() if r))
    assert result.copied == len(good) + 1  # and the regularisation image
    assert sorted(p.name for p in (dest / "reg" / "1_man").iterdir()) == ["man 1.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    items = scan_train_dir(dest / "img")
    assert count_steps(items, batch_size=2) == (80, 40)
    zoe = next(item for item in items if item.image_path.name == "Zoë am Strand 1.png")
    assert zoe.caption == "zoe, beach"
    grey = next(item for item in items if item.image_path.name == "grey.jpg")
    assert (grey.caption, grey.caption_path) == ("ohwx man", None)  # folder-name fallback


def open_error(path):
    try:
        open_image_rgb(path)
    except BadImageError as exc:
        return exc
    return None


def test_prepare_refuses_bad_destinations_and_keeps_captions_on_overwrite(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    solid(photos / "a.png")
    solid(photos / "b.png")
    with pytest.raises(PrepareError, match="is inside the training images folder"):
        prepare_dataset("ohwx", "man", photos, 10, photos / "out")
    with pytest.raises(PrepareError, match="is inside the training images folder"):
        prepare_dataset("ohwx", "man", photos, 10, photos)
    dest = tmp_path / "dest"
    prepare_dataset("ohwx", "man", photos, 10, dest)
    (dest / "img/10_ohwx man/a.txt").write_text("my edited caption")
    (dest / "model/ohwx.safetensors").write_bytes(b"trained")
    with pytest.raises(PrepareError, match="already exists; choose another folder or overwrite it"):
        prepare_dataset("ohwx", "man", photos, 10, dest)
    result = prepare_dataset("ohwx", "man", photos, 10, dest, overwrite=True)
    assert result.kept_captions == 1
    assert (dest / "img/10_ohwx man/a.txt").read_text() == "my edited caption"
    assert (dest / "model/ohwx.safetensors").read_bytes() == b"trained"


def test_a_failure_mid_way_leaves_no_half_layout(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    solid(photos / "a.png")
    (photos / "b.png").write_bytes(Path(solid(tmp_path / "x.png")).read_bytes())
    import engine.dataset.prepare as prepare

    real_copy = prepare.shutil.copy2
    calls = []

    def disk_full(source, target):
        calls.append(source)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_copy(source, target)

    monkeypatch.setattr(prepare.shutil, "copy2", disk_full)
    with pytest.raises(OSError, match="No space left"):
        prepare_dataset("ohwx", "man", photos, 10, tmp_path / "dest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "x.png"]


def test_layout_errors_explain_the_parent_rule(tmp_path):
    folder = tmp_path / "img" / "10_ohwx man"
    folder.mkdir(parents=True)
    solid(folder / "a.png")
    with pytest.raises(DatasetError, match=r"is itself a repeat folder; choose its parent .*img instead"):
        scan_train_dir(folder)
    loose = tmp_path / "loose"
    loose.mkdir()
    solid(loose / "a.png")
    with pytest.raises(DatasetError, match=r"no N_name folders .* \(it holds images directly: put them in a subfolder"):
        scan_train_dir(loose)
    assert read_caption(_bytes(tmp_path / "c.txt", b"\xef\xbb\xbfohwx,\r\n smiling \r\n")) == "ohwx, smiling"


def _bytes(path, data):
    path.write_bytes(data)
    return path


def captions(folder):
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def test_tagger_uses_bgr_white_padding_thresholds_kaomoji_and_prefix(tiny_wd14_dir, tmp_path):
    tagger = load_wd14(tiny_wd14_dir)
    assert (tagger.size, tagger.input_name) == (32, "input")
    images = tmp_path / "imgs"
    images.mkdir()
    solid(images / "red.png", size=(40, 40), color=(255, 0, 0))
    solid(images / "black square.png", size=(40, 40), color=(0, 0, 0))
    solid(images / "black wide.png", size=(80, 20), color=(0, 0, 0))
    result = tag_folder(tagger, images, prefix="ohwx", undesired_tags=["long hair"])
    assert (result.tagged, result.skipped, result.rejected) == (3, 0, [])
    assert captions(images) == {
        # red in RGB is channel 2 in BGR: red hair, not blue sky; ^_^ keeps its underscore.
        "red": "ohwx, red hair, ^_^\n",
        "black square": "ohwx, ^_^\n",
        # padding to a white square lifts every channel: white background appears.
        "black wide": "ohwx, ^_^, blue sky, red hair, white background\n",
    }
    with_rating = tag_folder(tagger, images, mode="overwrite", add_rating=True, character_threshold=0.5)
    assert with_rating.tagged == 3
    assert captions(images)["black square"] == "general, hatsune miku, ^_^, long hair\n"


def test_tagger_modes_and_bad_images(tiny_wd14_dir, tmp_path):
    tagger = load_wd14(tiny_wd14_dir)
    images = tmp_path / "imgs"
    images.mkdir()
    solid(images / "a.png", color=(0, 0, 0))
    (images / "a.txt").write_text("ohwx, my words\n")
    solid(images / "b.png", color=(0, 0, 0))
    (images / "broken.png").write_bytes(b"")
    nested = images / "sub"
    nested.mkdir()
    solid(nested / "c.png", color=(0, 0, 0))
    skipped = tag_folder(tagger, images, prefix="ohwx")
    assert (skipped.tagged, skipped.skipped, skipped.rejected) == (1, 1, [("broken.png", "empty file (0 bytes)")])
    assert captions(images)["a"] == "ohwx, my words\n"
    appended = tag_folder(tagger, images, prefix="ohwx", mode="append")
    assert captions(images)["a"] == "ohwx, my words, ^_^, long hair\n" and appended.tagged == 2
    tag_folder(tagger, images, mode="overwrite", recursive=True)
    assert captions(nested) == {"c": "^_^, long hair\n"}


def test_tagger_model_errors_name_the_files(tmp_path):
    with pytest.raises(TaggerError, match="model.onnx and selected_tags.csv missing; put the model.onnx"):
        load_wd14(tmp_path)
    with pytest.raises(TaggerError, match="is not in the Hugging Face cache and could not be downloaded"):
        load_wd14(repo_id="SmilingWolf/not-cached-anywhere")


def test_one_click_prepare_tag_and_preset(tiny_wd14_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    solid(photos / "red.png", color=(255, 0, 0))
    (photos / "empty.jpg").write_bytes(b"")
    preset = tmp_path / "p.json"
    save_preset(default_values(), preset)
    dest = tmp_path / "dest"
    result = run_cli("prepare", "--instance", "ohwx", "--class", "man", "--images", photos, "--repeats", 5,
                     "--dest", dest, "--tag", "--tagger-model-dir", tiny_wd14_dir, "--preset", preset)
    assert result.returncode == 1  # something was rejected
    assert "rejected empty.jpg: empty file (0 bytes)" in result.stderr
    assert "copied 1 images" in result.stdout and "tagged 1, skipped 0" in result.stdout
    assert (dest / "img/5_ohwx man/red.txt").read_text() == "ohwx, red hair, ^_^, long hair\n"
    values = load_preset(preset).values
    assert (values["train_data_dir"], values["output_dir"], values["reg_data_dir"]) == (
        str(dest / "img"), str(dest / "model"), "")
    again = run_cli("tag", dest / "img/5_ohwx man", "--model-dir", tiny_wd14_dir)
    assert again.returncode == 0 and "tagged 0, skipped 1" in again.stdout


def test_tagger_uses_the_hugging_face_cache_offline(tiny_wd14_dir, tmp_path, monkeypatch):
    """A model in the HF cache loads without the network (the tests run offline)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--SmilingWolf--wd-vit-tagger-v3" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (cache / "models--SmilingWolf--wd-vit-tagger-v3" / "refs").mkdir()
    (cache / "models--SmilingWolf--wd-vit-tagger-v3" / "refs" / "main").write_text("0" * 40)
    for name in ("model.onnx", "selected_tags.csv"):
        (snapshot / name).write_bytes((tiny_wd14_dir / name).read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    tagger = load_wd14()
    assert tagger.size == 32 and len(tagger.tags) == 10

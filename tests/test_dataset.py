"""Dataset preparation (layout, staging, overwrite rules, bad images) and the WD14 tagger on a
tiny real ONNX model (tests/fixtures/tagger.py)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import engine.dataset.prepare as prepare_module
from engine.cli import main
from engine.dataset.layout import DatasetError, read_caption, scan_train_dir
from engine.dataset.prepare import apply_copy_info, prepare_dataset
from engine.dataset.tagger import TaggerError, load_wd14, load_for_tagging, preprocess, tag_folder
from engine.events import PREPARING, TAGGING, Log, Progress
from engine.preset import default_values, load_preset, save_preset
from tests.fixtures.tagger import SIZE, expected_scores

RED, GREEN, BLUE, BLACK, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0), (255, 255, 255)


# --- image files users really have --------------------------------------------------------

def solid(path: Path, colour=RED, size=(40, 40), mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, **save)
    return path


def animated(path: Path, colours=(RED, BLUE), **save) -> Path:
    frames = [Image.new("RGB", (40, 40), c) for c in colours]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, **save)
    return path


def exif_rotated(path: Path) -> Path:
    """Stored 40 wide x 20 high, left half red, right half blue; EXIF orientation 6 (rotate 90
    clockwise to show), so upright it is 20 wide x 40 high with red on top."""
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)
    return path


def bomb_png(path: Path, width=100_000, height=100_000) -> Path:
    """A valid PNG header claiming 10 gigapixels (the file itself is tiny)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def messy_folder(folder: Path) -> dict[str, str | None]:
    """Every kind of file from the issue; name -> None if good, else a word of the expected reason."""
    folder.mkdir(parents=True, exist_ok=True)
    solid(folder / "cmyk.jpg", (0, 255, 255, 0), mode="CMYK")  # CMYK red
    solid(folder / "grey.jpg", 128, mode="L")
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.save(folder / "transparent.png")
    Image.fromarray(np.full((30, 30), 32768, dtype=np.uint16)).save(folder / "sixteen bit.png")
    animated(folder / "animated.webp")
    animated(folder / "animated gif.gif")
    exif_rotated(folder / "rotated.jpg")
    solid(folder / "café ü 写真 photo.png", GREEN)
    (folder / "zero.png").write_bytes(b"")
    truncated_jpeg(folder / "truncated.jpg")
    (folder / "notes.jpg").write_text("this is not an image", encoding="utf-8")
    bomb_png(folder / "bomb.png")
    return {"cmyk.jpg": None, "grey.jpg": None, "transparent.png": None, "sixteen bit.png": None,
            "animated.webp": None, "animated gif.gif": None, "rotated.jpg": None, "café ü 写真 photo.png": None,
            "zero.png": "empty", "truncated.jpg": "truncated", "notes.jpg": "not an image", "bomb.png": "too large"}


# --- prepare ---------------------------------------------------------------------------------

def photos(folder: Path, count=3, captions=True) -> Path:
    for index in range(count):
        solid(folder / f"photo {index}.png", (index * 40, 100, 200))
        if captions:
            (folder / f"photo {index}.txt").write_bytes(f"\ufeffohwx man,\r\nphoto {index}\r\n".encode("utf-8"))
    (folder / "Thumbs.db").write_bytes(b"junk")
    (folder / "notes.json").write_text("{}", encoding="utf-8")
    return folder


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_prepare_builds_the_layout_and_copy_info(tmp_path):
    source = photos(tmp_path / "src")
    reg = tmp_path / "reg src"
    solid(reg / "man 1.jpg", BLUE)
    events = []
    result = prepare_dataset("ohwx", "man", source, 10, tmp_path / "dest", reg_images_dir=reg, reg_repeats=2,
                             on_event=events.append)
    dest = tmp_path / "dest"
    assert listing(dest) == [
        "img", "img/10_ohwx man", "img/10_ohwx man/photo 0.png", "img/10_ohwx man/photo 0.txt",
        "img/10_ohwx man/photo 1.png", "img/10_ohwx man/photo 1.txt", "img/10_ohwx man/photo 2.png",
        "img/10_ohwx man/photo 2.txt", "log", "model", "reg", "reg/2_man", "reg/2_man/man 1.jpg"]
    assert result.copy_info == {"train_data_dir": str(dest / "img"), "reg_data_dir": str(dest / "reg"),
                                "output_dir": str(dest / "model"), "logging_dir": str(dest / "log")}
    assert (result.copied, result.rejected) == (4, [])
    assert result.train_folder == str(dest / "img" / "10_ohwx man")
    # captions are normalised: no BOM, no CRLF
    assert (dest / "img/10_ohwx man/photo 1.txt").read_bytes() == b"ohwx man, photo 1"
    assert (dest / "img/10_ohwx man/photo 0.png").read_bytes() == (source / "photo 0.png").read_bytes()
    items = scan_train_dir(result.copy_info["train_data_dir"])
    assert [(i.image_path.name, i.repeats, i.caption) for i in items] == [
        ("photo 0.png", 10, "ohwx man, photo 0"), ("photo 1.png", 10, "ohwx man, photo 1"),
        ("photo 2.png", 10, "ohwx man, photo 2")]
    progress = [e for e in events if isinstance(e, Progress)]
    assert {e.phase for e in progress} == {PREPARING}
    assert (progress[-1].done, progress[-1].total) == (4, 4)
    assert [p.name for p in tmp_path.iterdir()] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_prepare_without_reg_has_no_reg_folder(tmp_path):
    result = prepare_dataset("ohwx", "", photos(tmp_path / "src", captions=False), 5, tmp_path / "d")
    assert result.copy_info["reg_data_dir"] == ""
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["img", "log", "model"]
    assert listing(tmp_path / "d/img") == ["5_ohwx", "5_ohwx/photo 0.png", "5_ohwx/photo 1.png", "5_ohwx/photo 2.png"]


@pytest.mark.parametrize("dest", [".", "inside", "inside/deeper"])
def test_prepare_refuses_dest_equal_to_or_inside_the_source(tmp_path, dest):
    source = photos(tmp_path / "src")
    before = listing(source)
    with pytest.raises(DatasetError, match="inside it"):
        prepare_dataset("ohwx", "man", source, 10, source / dest)
    assert listing(source) == before


def test_prepare_refuses_a_source_inside_an_existing_dest(tmp_path):
    prepare_dataset("ohwx", "man", photos(tmp_path / "src"), 10, tmp_path / "dest")
    with pytest.raises(DatasetError, match="inside the destination"):
        prepare_dataset("ohwx", "man", tmp_path / "dest/img/10_ohwx man", 5, tmp_path / "dest", overwrite=True)


@pytest.mark.parametrize("instance, class_word, repeats, message", [
    ("", "man", 10, "instance: empty"), ("oh/wx", "man", 10, "instance: 'oh/wx' contains /"),
    ("ohwx", "m:n", 10, "class: 'm:n' contains :"), ("ohwx", "man", 0, "repeats: 0")])
def test_prepare_refuses_bad_names_and_repeats(tmp_path, instance, class_word, repeats, message):
    with pytest.raises(DatasetError, match=message):
        prepare_dataset(instance, class_word, photos(tmp_path / "src"), repeats, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_a_failure_mid_way_leaves_no_dest_and_no_staging(tmp_path, monkeypatch):
    source = photos(tmp_path / "src")
    calls = []

    def failing_copy(src, dst, *args, **kwargs):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_copy(src, dst)

    real_copy = prepare_module.shutil.copyfile
    monkeypatch.setattr(prepare_module.shutil, "copyfile", failing_copy)
    with pytest.raises(DatasetError, match="failed \\(disk full\\); nothing was written"):
        prepare_dataset("ohwx", "man", source, 10, tmp_path / "dest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_failure_mid_way_keeps_the_old_dest_untouched(tmp_path, monkeypatch):
    prepare_dataset("ohwx", "man", photos(tmp_path / "src"), 10, tmp_path / "dest")
    (tmp_path / "dest/model/my.safetensors").write_bytes(b"lora")
    before = {p: p.read_bytes() for p in (tmp_path / "dest").rglob("*") if p.is_file()}
    monkeypatch.setattr(prepare_module.shutil, "copyfile", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(DatasetError, match="failed \\(disk full\\); the old one is unchanged"):
        prepare_dataset("ohwx", "man", tmp_path / "src", 3, tmp_path / "dest", overwrite=True)
    assert {p: p.read_bytes() for p in (tmp_path / "dest").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "src"]


def test_existing_dest_needs_overwrite(tmp_path):
    source = photos(tmp_path / "src")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest/keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(DatasetError, match="--overwrite"):
        prepare_dataset("ohwx", "man", source, 10, tmp_path / "dest")
    assert listing(tmp_path / "dest") == ["keep.txt"]
    # an empty DEST folder (e.g. picked in a file dialog) is fine
    (tmp_path / "empty").mkdir()
    assert prepare_dataset("ohwx", "man", source, 10, tmp_path / "empty").copied == 3


def test_overwrite_rebuilds_img_keeps_model_log_and_dest_only_captions(tmp_path):
    source = photos(tmp_path / "src", captions=False)
    (source / "photo 2.txt").write_text("source caption 2", encoding="utf-8")
    dest = tmp_path / "dest"
    prepare_dataset("ohwx", "man", source, 10, dest)
    old = dest / "img/10_ohwx man"
    (old / "photo 0.txt").write_text("edited in dest 0", encoding="utf-8")  # no source caption: kept
    (old / "photo 2.txt").write_text("edited in dest 2", encoding="utf-8")  # source differs: saved aside
    (dest / "model/ohwx.safetensors").write_bytes(b"trained")
    (dest / "log/run.log").write_text("log", encoding="utf-8")
    (source / "photo 1.png").unlink()
    solid(old / "gone.png")
    (old / "gone.txt").write_text("caption of an image no longer in the source", encoding="utf-8")

    result = prepare_dataset("ohwx", "man", source, 3, dest, overwrite=True)
    assert sorted(p.name for p in (dest / "img").iterdir()) == ["3_ohwx man"]
    new = dest / "img/3_ohwx man"
    assert listing(new) == ["photo 0.png", "photo 0.txt", "photo 2.png", "photo 2.txt"]
    assert read_caption(new / "photo 0.txt") == "edited in dest 0"
    assert read_caption(new / "photo 2.txt") == "source caption 2"
    assert (dest / "model/ohwx.safetensors").read_bytes() == b"trained"
    assert (dest / "log/run.log").read_text(encoding="utf-8") == "log"
    saved = dest / "log/previous captions/img/10_ohwx man"
    assert read_caption(saved / "photo 2.txt") == "edited in dest 2"
    assert read_caption(saved / "gone.txt") == "caption of an image no longer in the source"
    assert (result.kept_captions, sorted(result.saved_captions)) == (
        1, [str(Path("img/10_ohwx man/gone.txt")), str(Path("img/10_ohwx man/photo 2.txt"))])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_prepare_rejects_bad_images_by_name_and_goes_on(tmp_path):
    expected = messy_folder(tmp_path / "src")
    events = []
    result = prepare_dataset("ohwx", "man", tmp_path / "src", 1, tmp_path / "dest", on_event=events.append)
    rejected = {Path(path).name: reason for path, reason in result.rejected}
    assert sorted(rejected) == sorted(name for name, bad in expected.items() if bad)
    for name, word in expected.items():
        if word:
            assert word in rejected[name], (name, rejected[name])
    assert result.copied == 8
    folder = tmp_path / "dest/img/1_ohwx man"
    # the GIF is converted to a PNG of its first frame; the rest are copied as they are
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["animated gif.png" if n == "animated gif.gif" else n for n, bad in expected.items() if not bad])
    with Image.open(folder / "animated gif.png") as gif_frame:
        assert gif_frame.convert("RGB").getpixel((5, 5)) == RED
    assert len([e for e in events if isinstance(e, Log) and e.level == "warning"]) == 4


def test_prepare_rejects_images_that_would_share_a_caption(tmp_path):
    solid(tmp_path / "src/a.png")
    solid(tmp_path / "src/a.jpg")
    result = prepare_dataset("ohwx", "man", tmp_path / "src", 1, tmp_path / "dest")
    assert result.copied == 1
    assert [(Path(p).name, "same name as a.jpg" in r) for p, r in result.rejected] == [("a.png", True)]


def test_apply_copy_info_writes_the_four_keys(tmp_path):
    preset = tmp_path / "p.json"
    save_preset(dict(default_values(), output_name="keep me"), preset)
    info = prepare_dataset("ohwx", "man", photos(tmp_path / "src"), 10, tmp_path / "dest").copy_info
    apply_copy_info(preset, info)
    values = load_preset(preset).values
    assert {key: values[key] for key in info} == info
    assert values["output_name"] == "keep me"


# --- WD14 tagger -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tagger(tiny_wd14_dir):
    return load_wd14(tiny_wd14_dir)


def test_load_reads_input_name_size_and_tags(tagger):
    assert (tagger.input_name, tagger.size) == ("input_1:0", SIZE)
    assert tagger.tag_names == ["general", "sensitive", "questionable", "explicit", "red theme", "blue sky",
                                "long hair", "^_^", "bright", "hatsune miku"]
    assert tagger.providers == ["CPUExecutionProvider"]


def test_preprocess_is_bgr_float_white_padded_and_centred():
    image = Image.new("RGB", (64, 32), RED)  # wide: white bands above and below
    pixels = preprocess(image, SIZE)
    assert pixels.dtype == np.float32 and pixels.shape == (SIZE, SIZE, 3)
    assert pixels[:7].tolist() == np.full((7, SIZE, 3), 255.0).tolist()
    assert pixels[25:].tolist() == np.full((7, SIZE, 3), 255.0).tolist()
    assert pixels[10:22].tolist() == np.tile([0.0, 0.0, 255.0], (12, SIZE, 1)).tolist()  # red as BGR


def test_exif_rotated_photo_is_tagged_upright(tmp_path):
    pixels = load_for_tagging(exif_rotated(tmp_path / "rotated.jpg"), SIZE)
    top, bottom = pixels[4, 16], pixels[28, 16]  # upright 20x40: red on top, blue below
    assert top[2] > 200 and top[0] < 60, top
    assert bottom[0] > 200 and bottom[2] < 60, bottom


def test_scores_prove_bgr_order_padding_and_thresholds(tagger, tmp_path):
    folder = tmp_path / "imgs"
    solid(folder / "red.png", RED)
    solid(folder / "black wide.png", BLACK, size=(64, 32))
    solid(folder / "black square.png", BLACK)
    solid(folder / "dark green.png", (0, 128, 0))
    result = tag_folder(tagger, folder)
    assert (result.tagged, result.skipped, result.rejected) == (4, 0, [])
    caption = lambda name: read_caption(folder / f"{name}.txt")  # noqa: E731
    assert caption("red") == "red theme"  # "blue sky" would mean the channels were not swapped
    assert caption("black wide") == "bright"  # only the white padding makes it bright
    assert caption("black square") == ""
    scores = expected_scores((0, 128, 0))
    assert 0.5 < scores["hatsune_miku"] < 0.51 and 0.88 < scores["^_^"] < 0.89
    assert caption("dark green") == "bright, long hair, ^_^"  # by score; character 0.503 < 0.85
    tag_folder(tagger, folder, mode="overwrite", character_threshold=0.5, general_threshold=0.9)
    assert caption("dark green") == "hatsune miku, bright, long hair"
    tag_folder(tagger, folder, mode="overwrite", add_rating=True)
    assert caption("red") == "sensitive, red theme"
    assert caption("black square") == "general"


def test_prefix_first_kaomoji_kept_and_undesired_removed(tagger, tmp_path):
    solid(tmp_path / "green.png", GREEN)
    tag_folder(tagger, tmp_path, prefix="ohwx", undesired_tags="bright, Long_Hair")
    caption = (tmp_path / "green.txt").read_bytes()
    assert caption == "ohwx, hatsune miku, ^_^".encode("utf-8")


def test_skip_overwrite_and_append_modes(tagger, tmp_path):
    solid(tmp_path / "a.png", RED)
    solid(tmp_path / "b.png", RED)
    (tmp_path / "a.txt").write_bytes("\ufeffmy caption,\r\nred theme\r\n".encode("utf-8"))
    result = tag_folder(tagger, tmp_path, prefix="ohwx")
    assert (result.tagged, result.skipped) == (1, 1)
    assert (tmp_path / "a.txt").read_bytes() == "\ufeffmy caption,\r\nred theme\r\n".encode("utf-8")
    assert (tmp_path / "b.txt").read_bytes() == b"ohwx, red theme"
    result = tag_folder(tagger, tmp_path, prefix="ohwx", mode="append", add_rating=True)
    assert (result.tagged, result.skipped) == (2, 0)
    assert (tmp_path / "a.txt").read_bytes() == b"ohwx, my caption, red theme, sensitive"
    assert (tmp_path / "b.txt").read_bytes() == b"ohwx, red theme, sensitive"
    tag_folder(tagger, tmp_path, mode="overwrite", caption_extension=".caption")
    assert (tmp_path / "a.caption").read_bytes() == b"red theme"
    assert (tmp_path / "a.txt").read_bytes() == b"ohwx, my caption, red theme, sensitive"


def test_recursive_and_batched(tagger, tmp_path):
    for index in range(5):
        solid(tmp_path / f"top {index}.png", GREEN)
    solid(tmp_path / "sub folder/deep.png", RED)
    events = []
    assert tag_folder(tagger, tmp_path, batch_size=2, on_event=events.append).tagged == 5
    assert not (tmp_path / "sub folder/deep.txt").exists()
    assert [(e.done, e.total) for e in events if isinstance(e, Progress) and e.phase == TAGGING] == [
        (0, 5), (2, 5), (4, 5), (5, 5)]
    result = tag_folder(tagger, tmp_path, recursive=True, workers=0)
    assert (result.tagged, result.skipped) == (1, 5)
    assert read_caption(tmp_path / "sub folder/deep.txt") == "red theme"


def test_tagging_messy_images(tagger, tmp_path):
    expected = messy_folder(tmp_path)
    result = tag_folder(tagger, tmp_path)
    rejected = {Path(path).name: reason for path, reason in result.rejected}
    assert sorted(rejected) == sorted(name for name, bad in expected.items() if bad)
    assert result.tagged == 8
    caption = lambda name: read_caption(tmp_path / (Path(name).stem + ".txt"))  # noqa: E731
    assert caption("cmyk.jpg") == "red theme"
    assert expected_scores(WHITE)["hatsune_miku"] > 0.85 and expected_scores(WHITE)["red_theme"] < 0.35
    assert caption("transparent.png") == "hatsune miku, bright"  # white, not the hidden red
    assert caption("sixteen bit.png") == "bright"  # 16-bit grey 50% -> 128
    assert caption("grey.jpg") == "bright"
    assert caption("animated.webp") == "red theme"  # first frame only
    assert caption("animated gif.gif") == "red theme"
    assert caption("café ü 写真 photo.png") == "hatsune miku, bright, long hair, ^_^"
    for name, bad in expected.items():
        if bad:
            assert not (tmp_path / (Path(name).stem + ".txt")).exists()


def test_missing_model_files_name_both_files(tmp_path):
    with pytest.raises(TaggerError, match="model.onnx and selected_tags.csv not found"):
        load_wd14(tmp_path)


def test_offline_without_cache_says_where_to_put_the_files(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaggerError) as error:
        load_wd14(None, repo_id="fluxlora-tests/not-a-cached-tagger")
    message = str(error.value)
    assert "model.onnx" in message and "selected_tags.csv" in message and "--model-dir" in message
    assert "https://huggingface.co/fluxlora-tests/not-a-cached-tagger" in message


def test_model_and_tags_that_do_not_match(tiny_wd14_dir, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((tiny_wd14_dir / "model.onnx").read_bytes())
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n1,a,0,1\n", encoding="utf-8")
    with pytest.raises(TaggerError, match="10 outputs but selected_tags.csv lists 1 tags"):
        load_wd14(folder)


# --- CLI -------------------------------------------------------------------------------------

def test_cli_prepare_with_tag_and_preset(tmp_path, tiny_wd14_dir, capsys):
    source = tmp_path / "src"
    solid(source / "green.png", GREEN)
    solid(source / "red.png", RED)
    (source / "red.txt").write_text("my own caption", encoding="utf-8")
    preset = tmp_path / "p.json"
    save_preset(default_values(), preset)
    code = main(["prepare", "--instance", "ohwx", "--class", "man", "--images", str(source), "--repeats", "4",
                 "--dest", str(tmp_path / "dest"), "--tag", "--tagger-model-dir", str(tiny_wd14_dir),
                 "--preset", str(preset)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "copied 2, tagged 1, skipped 1 (already captioned), rejected 0" in out
    folder = tmp_path / "dest/img/4_ohwx man"
    assert read_caption(folder / "green.txt") == "ohwx, hatsune miku, bright, long hair, ^_^"
    assert read_caption(folder / "red.txt") == "my own caption"
    values = json.loads(preset.read_text(encoding="utf-8"))
    assert values["train_data_dir"] == str(tmp_path / "dest/img")
    assert values["output_dir"] == str(tmp_path / "dest/model")
    assert values["reg_data_dir"] == ""
    assert "preparing" in err and "tagging" in err


def test_cli_prepare_exit_1_when_something_was_rejected(tmp_path, capsys):
    solid(tmp_path / "src/ok.png")
    (tmp_path / "src/zero.jpg").write_bytes(b"")
    code = main(["prepare", "--instance", "ohwx", "--class", "man", "--images", str(tmp_path / "src"),
                 "--repeats", "2", "--dest", str(tmp_path / "dest")])
    out, err = capsys.readouterr()
    assert code == 1
    assert "copied 1, rejected 1" in out
    assert "zero.jpg: empty file (0 bytes)" in err


def test_cli_prepare_errors_are_one_line(tmp_path, capsys):
    solid(tmp_path / "src/ok.png")
    code = main(["prepare", "--instance", "ohwx", "--images", str(tmp_path / "src"), "--repeats", "2",
                 "--dest", str(tmp_path / "src/out")])
    assert code == 1
    assert capsys.readouterr().err.startswith("error: destination")
    code = main(["prepare", "--instance", "ohwx", "--images", str(tmp_path / "src"), "--repeats", "2",
                 "--dest", str(tmp_path / "d"), "--tag", "--tagger-model-dir", str(tmp_path / "nothing")])
    assert code == 1
    assert "model.onnx and selected_tags.csv not found" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # the tagger is loaded before anything is written


def test_cli_tag(tmp_path, tiny_wd14_dir, capsys):
    solid(tmp_path / "imgs/a.png", GREEN)
    solid(tmp_path / "imgs/b.png", RED)
    (tmp_path / "imgs/b.txt").write_text("kept", encoding="utf-8")
    args = ["tag", str(tmp_path / "imgs"), "--model-dir", str(tiny_wd14_dir), "--prefix", "ohwx",
            "--undesired-tags", "bright,^_^", "--character-threshold", "0.99"]
    assert main(args) == 0
    assert "tagged 1, skipped 1 (already captioned), rejected 0" in capsys.readouterr().out
    assert read_caption(tmp_path / "imgs/a.txt") == "ohwx, long hair"
    assert main(args + ["--append"]) == 0
    assert read_caption(tmp_path / "imgs/b.txt") == "ohwx, kept, red theme"
    (tmp_path / "imgs/bad.png").write_text("no", encoding="utf-8")
    assert main(args + ["--overwrite", "--caption-extension", "caption"]) == 1
    assert read_caption(tmp_path / "imgs/b.caption") == "ohwx, red theme"
    assert "bad.png: not an image file" in capsys.readouterr().err


def test_a_failed_final_rename_restores_the_old_dest(tmp_path, monkeypatch):
    prepare_dataset("ohwx", "man", photos(tmp_path / "src"), 10, tmp_path / "dest")
    (tmp_path / "dest/model/my.safetensors").write_bytes(b"lora")
    before = {p: p.read_bytes() for p in (tmp_path / "dest").rglob("*") if p.is_file()}
    real_replace = prepare_module.os.replace

    def replace(src, dst):
        if str(src).endswith(".staging") and Path(dst) == tmp_path / "dest":
            raise PermissionError("folder in use")
        return real_replace(src, dst)

    monkeypatch.setattr(prepare_module.os, "replace", replace)
    monkeypatch.setattr("engine.fsutil.REPLACE_RETRY_S", 0.1)  # the retry for a busy folder, shortened
    with pytest.raises(DatasetError, match="folder in use"):
        prepare_dataset("ohwx", "man", tmp_path / "src", 3, tmp_path / "dest", overwrite=True)
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in (tmp_path / "dest").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "src"]


def test_large_jpeg_decoded_at_reduced_scale_gives_the_same_input(tmp_path):
    ramp = np.linspace(0, 255, 1024, dtype=np.float32)
    pixels = np.stack([np.tile(ramp, (768, 1)), np.tile(ramp[:768, None], (1, 1024)), np.full((768, 1024), 90)], -1)
    path = tmp_path / "big.jpg"
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
    with Image.open(path) as image:
        assert image.draft(None, (SIZE, SIZE)) is not None  # Pillow would decode it smaller
    full = preprocess(Image.open(path).convert("RGB"), SIZE)
    assert np.abs(load_for_tagging(path, SIZE) - full).max() < 6


def test_repeated_overwrites_never_drop_a_saved_caption(tmp_path):
    source = photos(tmp_path / "src", count=1, captions=False)
    (source / "photo 0.txt").write_text("from source", encoding="utf-8")
    dest = tmp_path / "dest"
    prepare_dataset("ohwx", "man", source, 10, dest)
    (dest / "img/10_ohwx man/photo 0.txt").write_text("edit one", encoding="utf-8")
    (dest / "img/5_other").mkdir()  # a second repeat folder with a caption of the same name
    (dest / "img/5_other/photo 0.txt").write_text("other folder", encoding="utf-8")
    prepare_dataset("ohwx", "man", source, 10, dest, overwrite=True)
    (dest / "img/10_ohwx man/photo 0.txt").write_text("edit two", encoding="utf-8")
    result = prepare_dataset("ohwx", "man", source, 10, dest, overwrite=True)
    assert result.saved_captions == [str(Path("img/10_ohwx man/photo 0.txt"))]
    saved = sorted((dest / "log/previous captions").rglob("*.txt"))
    assert sorted(read_caption(p) for p in saved) == ["edit one", "edit two", "other folder"]
    assert read_caption(dest / "img/10_ohwx man/photo 0.txt") == "from source"


def test_repo_id_uses_the_hugging_face_cache_offline(tiny_wd14_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "hub/models--fluxlora-tests--tiny-wd14/snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for name in ("model.onnx", "selected_tags.csv"):
        (snapshot / name).write_bytes((tiny_wd14_dir / name).read_bytes())
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs/main").write_text("a" * 40, encoding="utf-8")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    tagger = load_wd14(None, repo_id="fluxlora-tests/tiny-wd14")
    assert (tagger.input_name, tagger.size, tagger.tag_names[-1]) == ("input_1:0", SIZE, "hatsune miku")


def test_prepare_refuses_dest_inside_the_source_through_a_symlink(tmp_path):
    source = photos(tmp_path / "src")
    (tmp_path / "link").symlink_to(source, target_is_directory=True)
    with pytest.raises(DatasetError, match="inside it"):
        prepare_dataset("ohwx", "man", source, 10, tmp_path / "link/dest")
    assert not (source / "dest").exists()


def test_tagging_rejects_images_that_would_share_a_caption(tagger, tmp_path):
    solid(tmp_path / "a.jpg", RED)
    solid(tmp_path / "a.png", GREEN)
    result = tag_folder(tagger, tmp_path)
    assert result.tagged == 1
    assert [(Path(p).name, "same name as a.jpg" in r) for p, r in result.rejected] == [("a.png", True)]
    assert read_caption(tmp_path / "a.txt") == "red theme"


def test_prepare_with_no_usable_image_fails_and_writes_nothing(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src/a.jpg").write_bytes(b"")
    (tmp_path / "src/b.png").write_text("text", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"no usable images in .*src \(a.jpg: empty file \(0 bytes\); b.png: not an image"):
        prepare_dataset("ohwx", "man", tmp_path / "src", 1, tmp_path / "dest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_prepare_from_values_is_the_one_click(tmp_path, tiny_wd14_dir):
    from engine.dataset.prepare import prepare_from_values

    solid(tmp_path / "src/green.png", GREEN)
    solid(tmp_path / "reg/man.png", BLUE)
    values = dict(default_values(), dataset_instance_prompt="ohwx", dataset_class_prompt="man",
                  dataset_images_dir=str(tmp_path / "src"), dataset_repeats=7, dataset_dest_dir=str(tmp_path / "d"),
                  dataset_reg_images_dir=str(tmp_path / "reg"), dataset_reg_repeats=2,
                  tagger_model_dir=str(tiny_wd14_dir), tagger_undesired_tags="bright", tagger_add_rating=True,
                  caption_extension=".caption")
    prepared, tagged = prepare_from_values(values, tag=True)
    assert (prepared.copied, tagged.tagged, tagged.rejected) == (2, 1, [])
    assert prepared.copy_info["reg_data_dir"] == str(tmp_path / "d/reg")
    assert read_caption(tmp_path / "d/img/7_ohwx man/green.caption") == "ohwx, general, hatsune miku, long hair, ^_^"
    assert listing(tmp_path / "d/reg") == ["2_man", "2_man/man.png"]  # reg images are not tagged


def test_cli_prepare_checks_the_preset_before_writing(tmp_path, capsys):
    solid(tmp_path / "src/ok.png")
    (tmp_path / "bad.json").write_text('{"preset_version": 1, "learning_rate": "fast"}', encoding="utf-8")
    code = main(["prepare", "--instance", "ohwx", "--images", str(tmp_path / "src"), "--repeats", "2",
                 "--dest", str(tmp_path / "d"), "--preset", str(tmp_path / "bad.json")])
    assert code == 1
    assert "learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_an_unwritable_caption_rejects_that_image_and_the_run_goes_on(tagger, tmp_path):
    solid(tmp_path / "a.png", RED)
    solid(tmp_path / "b.png", RED)
    (tmp_path / "a.txt").mkdir()  # something in the way that cannot be replaced by a file
    result = tag_folder(tagger, tmp_path)
    assert result.tagged == 1 and read_caption(tmp_path / "b.txt") == "red theme"
    assert [(Path(p).name, r.startswith("cannot write a.txt")) for p, r in result.rejected] == [("a.png", True)]


def test_a_parked_folder_left_by_an_interrupted_preparation_is_kept_and_named(tmp_path):
    source = photos(tmp_path / "src", captions=False)
    dest = tmp_path / "dest"
    prepare_dataset("ohwx", "man", source, 10, dest)
    # A crash between parking DEST and renaming the new one in left the user's files here.
    parked = tmp_path / ".dest.old"
    (parked / "model").mkdir(parents=True)
    (parked / "model/ohwx.safetensors").write_bytes(b"the only copy")
    events = []
    prepare_dataset("ohwx", "man", source, 3, dest, overwrite=True, on_event=events.append)
    assert (parked / "model/ohwx.safetensors").read_bytes() == b"the only copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dest.old", "dest", "src"]  # this run's parking is gone
    warnings = [e.text for e in events if isinstance(e, Log) and e.level == "warning"]
    assert warnings == [f"{parked} was left by an interrupted earlier preparation and may hold files that were in "
                        "dest (model/, log/); it is kept: move back what you need, then delete it"]
    assert sorted(p.name for p in (dest / "img").iterdir()) == ["3_ohwx man"]


def test_the_page_names_a_kept_leftover_of_an_interrupted_preparation(tmp_path):
    from engine.preset import default_values
    from gui import actions

    source = photos(tmp_path / "src", captions=False)
    (tmp_path / ".dest.old").mkdir()
    values = dict(default_values(), dataset_instance_prompt="ohwx", dataset_class_prompt="man",
                  dataset_images_dir=str(source), dataset_dest_dir=str(tmp_path / "dest"), dataset_repeats=3)
    message, _ = actions.prepare(values, overwrite=False, tag=False, progress=lambda *a, **k: None)
    assert f"**Kept `{tmp_path / '.dest.old'}`**: an interrupted earlier preparation left it" in message

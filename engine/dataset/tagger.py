"""WD14 tagging (SmilingWolf's v3 ONNX models) of a folder of images into caption files.

Preprocessing as the models were trained: transparency onto white, pad to a centred white
square, resize to the graph's input size, BGR, float32 0-255, NHWC. Decoding and
preprocessing run in a thread pool (PIL releases the GIL), inference in batches.
"""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from engine.dataset.images import BadImageError, open_image_rgb
from engine.dataset.layout import IMAGE_EXTENSIONS, read_caption
from engine.events import TAGGING, Progress, emit
from engine.fsutil import atomic_write_text

DEFAULT_REPO = "SmilingWolf/wd-vit-tagger-v3"
MODEL_FILE, TAGS_FILE = "model.onnx", "selected_tags.csv"
RATING, GENERAL, CHARACTER = 9, 0, 4
KAOMOJI = {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
           "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}


class TaggerError(ValueError):
    """The tagger model cannot be used; the message says which files and where."""


@dataclass
class TagResult:
    tagged: int = 0
    skipped: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)


def tag_text(name: str) -> str:
    return name if name in KAOMOJI else name.replace("_", " ")


class WD14Tagger:
    def __init__(self, model_path: Path, tags_path: Path):
        import onnxruntime

        available = onnxruntime.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = onnxruntime.InferenceSession(str(model_path), providers=providers)
        except Exception as exc:
            raise TaggerError(f"{model_path}: not a usable ONNX model ({exc})") from None
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.size = int(model_input.shape[1])  # NHWC: [batch, height, width, 3]
        self.tags = _read_tags(tags_path)
        outputs = self.session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != len(self.tags):
            raise TaggerError(f"{tags_path}: {len(self.tags)} tags but the model scores {outputs}; use the CSV of this model")

    def preprocess(self, path: Path) -> np.ndarray:
        with open_image_rgb(path) as image:
            side = max(image.size)
            square = Image.new("RGB", (side, side), (255, 255, 255))
            square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        resample = Image.BICUBIC if side < self.size else Image.BOX
        array = np.asarray(square.resize((self.size, self.size), resample), dtype=np.float32)
        return array[:, :, ::-1]  # RGB -> BGR

    def scores(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0]

    def caption_tags(self, scores: np.ndarray, general_threshold: float, character_threshold: float,
                     add_rating: bool) -> list[str]:
        ratings = [(score, name) for (name, category), score in zip(self.tags, scores) if category == RATING]
        characters = [(score, name) for (name, category), score in zip(self.tags, scores)
                      if category == CHARACTER and score >= character_threshold]
        general = [(score, name) for (name, category), score in zip(self.tags, scores)
                   if category == GENERAL and score >= general_threshold]
        tags = [max(ratings)[1]] if add_rating and ratings else []
        tags += [name for _, name in sorted(characters, key=lambda t: -t[0])]
        tags += [name for _, name in sorted(general, key=lambda t: -t[0])]
        return [tag_text(name) for name in tags]


def _read_tags(path: Path) -> list[tuple[str, int]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return [(row["name"], int(row["category"])) for row in rows]
    except (OSError, KeyError, ValueError) as exc:
        raise TaggerError(f"{path}: not a WD14 selected_tags.csv (tag_id,name,category,count): {exc}") from None


def load_wd14(model_dir=None, repo_id: str = DEFAULT_REPO) -> WD14Tagger:
    if model_dir:
        folder = Path(model_dir)
        missing = [name for name in (MODEL_FILE, TAGS_FILE) if not (folder / name).is_file()]
        if missing:
            raise TaggerError(f"tagger model folder {folder}: {' and '.join(missing)} missing; put the "
                              f"{MODEL_FILE} and {TAGS_FILE} of a WD14 model (e.g. {DEFAULT_REPO}) there")
        return WD14Tagger(folder / MODEL_FILE, folder / TAGS_FILE)
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = [try_to_load_from_cache(repo_id, name) for name in (MODEL_FILE, TAGS_FILE)]
    if all(isinstance(path, str) for path in cached):  # no network round trip when already cached
        return WD14Tagger(*map(Path, cached))
    try:
        paths = [Path(hf_hub_download(repo_id, name)) for name in (MODEL_FILE, TAGS_FILE)]
    except Exception as exc:
        raise TaggerError(
            f"the WD14 model {repo_id} is not in the Hugging Face cache and could not be downloaded "
            f"({type(exc).__name__}); connect once, or download {MODEL_FILE} and {TAGS_FILE} from "
            f"huggingface.co/{repo_id} into a folder and choose it as the tagger model folder") from None
    return WD14Tagger(*paths)


def tag_folder(tagger: WD14Tagger, folder, *, general_threshold: float = 0.35, character_threshold: float = 0.85,
               add_rating: bool = False, prefix: str = "", undesired_tags=(), caption_extension: str = ".txt",
               mode: str = "skip", recursive: bool = False, batch_size: int = 8, workers: int = 4,
               on_event=None) -> TagResult:
    """Write a caption next to each image. mode: skip images that have one, overwrite, append."""
    if mode not in ("skip", "overwrite", "append"):
        raise ValueError(f"mode: {mode!r} is not one of skip, overwrite, append")
    folder = Path(folder)
    if not folder.is_dir():
        raise TaggerError(f"{folder}: folder not found")
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    images = sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                    and ".fluxlora-cache" not in p.parts)
    unwanted = {tag_text(t.strip()) for t in undesired_tags if t.strip()}
    result = TagResult()
    todo = []
    for image in images:
        if mode == "skip" and image.with_suffix(caption_extension).is_file():
            result.skipped += 1
        else:
            todo.append(image)
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            arrays = list(pool.map(_safe_preprocess(tagger), chunk))
            good = [(image, array) for image, array in zip(chunk, arrays) if not isinstance(array, str)]
            result.rejected += [(image.name, array) for image, array in zip(chunk, arrays) if isinstance(array, str)]
            if good:
                scores = tagger.scores(np.stack([array for _, array in good]))
                for (image, _), row in zip(good, scores):
                    tags = [t for t in tagger.caption_tags(row, general_threshold, character_threshold, add_rating)
                            if t not in unwanted]
                    _write_caption(image.with_suffix(caption_extension), tags, prefix.strip(), mode)
                    result.tagged += 1
            done += len(chunk)
            emit(on_event, Progress(TAGGING, done, len(todo)))
    return result


def _safe_preprocess(tagger: WD14Tagger):
    def run(path: Path):
        try:
            return tagger.preprocess(path)
        except BadImageError as exc:
            return str(exc)
    return run


def _write_caption(path: Path, tags: list[str], prefix: str, mode: str) -> None:
    existing = [t.strip() for t in read_caption(path).split(",") if t.strip()] if mode == "append" and path.is_file() else []
    words = existing + [t for t in tags if t not in existing]
    if prefix:
        words = [prefix] + [w for w in words if w != prefix]
    atomic_write_text(path, ", ".join(words) + "\n")

"""WD14 tagger (SmilingWolf's ONNX models): images -> comma-separated tag captions.

onnxruntime runs the model; decoding and preprocessing run in a thread pool (Pillow and numpy
release the GIL) a few batches ahead of the model, so memory stays bounded.
"""

from __future__ import annotations

import csv
import os
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from engine.dataset.images import BadImageError, open_image_rgb
from engine.dataset.layout import IMAGE_EXTENSIONS, read_caption
from engine.events import TAGGING, Log, Progress, emit
from engine.fsutil import atomic_write_text

DEFAULT_REPO_ID = "SmilingWolf/wd-vit-tagger-v3"
MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
RATING, GENERAL, CHARACTER = 9, 0, 4
KAOMOJI = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3",
                     "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})
TAGGED_EXTENSIONS = IMAGE_EXTENSIONS + (".gif",)
MODES = ("skip", "overwrite", "append")


class TaggerError(ValueError):
    """The tagger model cannot be loaded or used; the message says what to do."""


@dataclass
class WD14Tagger:
    session: Any  # onnxruntime.InferenceSession
    input_name: str
    size: int
    tag_names: list[str]  # as written in captions (kaomoji kept, other underscores -> spaces)
    categories: np.ndarray  # one category per output, from selected_tags.csv

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """NHWC float32 BGR 0-255 batch -> (N, tags) probabilities."""
        return self.session.run(None, {self.input_name: batch})[0]


@dataclass
class TagResult:
    tagged: int = 0
    skipped: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file path, reason)


def load_wd14(model_dir=None, repo_id: str = DEFAULT_REPO_ID) -> WD14Tagger:
    if model_dir:
        folder = Path(model_dir)
        model_path, tags_path = folder / MODEL_FILE, folder / TAGS_FILE
        missing = [p.name for p in (model_path, tags_path) if not p.is_file()]
        if missing:
            raise TaggerError(f"WD14 model folder {folder}: {' and '.join(missing)} not found; it must hold "
                              f"{MODEL_FILE} and {TAGS_FILE} (from https://huggingface.co/{repo_id})")
    else:
        model_path, tags_path = (_hub_file(repo_id, name) for name in (MODEL_FILE, TAGS_FILE))
    names, categories = read_selected_tags(tags_path)
    return _session(model_path, names, categories)


def _hub_file(repo_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:  # the cache first: without a network the hub client retries for ~20 s before using it
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as exc:  # offline, not cached, unknown repo, network: all the same advice
        raise TaggerError(
            f"WD14 model {repo_id}: cannot get {filename} from the Hugging Face hub or its cache "
            f"({type(exc).__name__}); download {MODEL_FILE} and {TAGS_FILE} from https://huggingface.co/{repo_id} "
            "into one folder and pass it as --model-dir (GUI: WD14 model folder)") from None


def read_selected_tags(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
        names = [row["name"] for row in rows]
        categories = np.array([int(row["category"]) for row in rows], dtype=np.int64)
    except (OSError, KeyError, TypeError, ValueError, csv.Error) as exc:
        raise TaggerError(f"{path}: not a WD14 {TAGS_FILE} (needs columns tag_id,name,category,count): {exc}") from None
    if not names:
        raise TaggerError(f"{path}: no tags")
    return [caption_tag(name) for name in names], categories


def caption_tag(name: str) -> str:
    return name if name in KAOMOJI else name.replace("_", " ")


def _session(model_path: Path, names: list[str], categories: np.ndarray) -> WD14Tagger:
    import onnxruntime as ort

    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = [p for p in wanted if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(model_path), providers=providers)
    except Exception as exc:
        raise TaggerError(f"{model_path}: onnxruntime cannot load it ({exc})") from None
    graph_input = session.get_inputs()[0]
    shape = graph_input.shape
    if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
        raise TaggerError(f"{model_path}: input {graph_input.name} has shape {shape}; a WD14 model takes "
                          "NHWC images [batch, size, size, 3]")
    outputs = session.get_outputs()[0].shape
    if isinstance(outputs[-1], int) and outputs[-1] != len(names):
        raise TaggerError(f"{model_path}: {outputs[-1]} outputs but {TAGS_FILE} lists {len(names)} tags; "
                          "use the two files of the same model")
    return WD14Tagger(session, graph_input.name, shape[1], names, categories)


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """Upright RGB image -> HWC float32 BGR 0-255: scaled to fit `size`, centred on a white square.

    Scaling before padding gives the same picture as padding then scaling, without building a
    large white square first.
    """
    scale = size / max(image.size)
    fitted = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if fitted != image.size:
        image = image.resize(fitted, Image.Resampling.BICUBIC, reducing_gap=3.0)
    square = Image.new("RGB", (size, size), (255, 255, 255))
    square.paste(image, ((size - fitted[0]) // 2, (size - fitted[1]) // 2))
    return np.ascontiguousarray(np.asarray(square, dtype=np.float32)[:, :, ::-1])


def load_for_tagging(path: str | Path, size: int) -> np.ndarray:
    # JPEGs decode straight at a reduced scale (still at least `size` on each side)
    return preprocess(open_image_rgb(path, draft_size=size), size)


def tags_for(tagger: WD14Tagger, scores: np.ndarray, general_threshold: float = 0.35,
             character_threshold: float = 0.85, add_rating: bool = False) -> list[str]:
    """One image's scores -> tags: rating (argmax, optional), characters, general; each by score."""
    tags = []
    cats = tagger.categories
    if add_rating and (cats == RATING).any():
        ratings = np.flatnonzero(cats == RATING)
        tags.append(tagger.tag_names[ratings[np.argmax(scores[ratings])]])
    for category, threshold in ((CHARACTER, character_threshold), (GENERAL, general_threshold)):
        chosen = np.flatnonzero((cats == category) & (scores >= threshold))
        tags.extend(tagger.tag_names[i] for i in chosen[np.argsort(-scores[chosen], kind="stable")])
    return tags


def compose_caption(tags: Iterable[str], prefix: str = "", undesired: Iterable[str] = (), existing: str = "") -> str:
    """prefix first, then existing caption tags (append mode), then new tags; no duplicates."""
    blocked = {_normal(tag) for tag in undesired if tag.strip()}
    result, seen = [], set()
    prefix_tags = [t.strip() for t in prefix.split(",") if t.strip()]
    existing_tags = [t.strip() for t in existing.split(",") if t.strip()]
    for tag in prefix_tags + existing_tags + [t for t in tags if _normal(t) not in blocked]:
        if _normal(tag) not in seen:
            seen.add(_normal(tag))
            result.append(tag)
    return ", ".join(result)


def _normal(tag: str) -> str:
    tag = tag.strip().lower()
    return tag if tag in KAOMOJI else tag.replace("_", " ")


def parse_tag_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in TAGGED_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def tag_folder(tagger: WD14Tagger, folder, *, general_threshold: float = 0.35, character_threshold: float = 0.85,
               add_rating: bool = False, prefix: str = "", undesired_tags: Iterable[str] = (),
               caption_extension: str = ".txt", mode: str = "skip", recursive: bool = False, batch_size: int = 8,
               on_event: Callable | None = None, workers: int | None = None) -> TagResult:
    """Caption every image in `folder`. `workers=0` decodes serially (for the benchmark)."""
    if mode not in MODES:
        raise ValueError(f"tagger mode: {mode!r} is not one of {', '.join(MODES)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise TaggerError(f"folder {folder} not found")
    if not caption_extension.startswith("."):
        caption_extension = "." + caption_extension
    undesired = parse_tag_list(undesired_tags) if isinstance(undesired_tags, str) else list(undesired_tags)
    result = TagResult()
    todo, owners = [], {}
    for image in list_images(folder, recursive):
        caption_key = image.with_suffix(caption_extension).as_posix().lower()
        if caption_key in owners:
            result.rejected.append((str(image), f"has the same name as {owners[caption_key]}, so they would share "
                                                 "one caption file; rename one of them"))
            emit(on_event, Log(f"rejected {image}: {result.rejected[-1][1]}", "warning"))
            continue
        owners[caption_key] = image.name
        if mode == "skip" and image.with_suffix(caption_extension).is_file():
            result.skipped += 1
        else:
            todo.append(image)
    total = len(todo)
    emit(on_event, Progress(TAGGING, 0, total))
    done = 0
    load = lambda path: _load_or_reason(path, tagger.size)  # noqa: E731
    pool = ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) if workers != 0 else None
    try:
        for chunk in _batches(_prefetch(pool, load, todo, ahead=2 * batch_size), batch_size):
            good = [(path, pixels) for path, pixels in chunk if not isinstance(pixels, str)]
            for path, reason in ((p, r) for p, r in chunk if isinstance(r, str)):
                result.rejected.append((str(path), reason))
                emit(on_event, Log(f"rejected {path}: {reason}", "warning"))
            if good:
                scores = tagger.predict(np.stack([pixels for _, pixels in good]))
                for (path, _), image_scores in zip(good, scores):
                    tags = tags_for(tagger, image_scores, general_threshold, character_threshold, add_rating)
                    caption_path = path.with_suffix(caption_extension)
                    existing = read_caption(caption_path) if mode == "append" and caption_path.is_file() else ""
                    try:
                        atomic_write_text(caption_path, compose_caption(tags, prefix, undesired, existing))
                    except OSError as exc:  # read-only folder, disk full: this image fails, the run goes on
                        result.rejected.append((str(path), f"cannot write {caption_path.name} ({exc})"))
                        emit(on_event, Log(f"rejected {path}: {result.rejected[-1][1]}", "warning"))
                        continue
                    result.tagged += 1
            done += len(chunk)
            emit(on_event, Progress(TAGGING, done, total))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return result


def _load_or_reason(path: Path, size: int) -> np.ndarray | str:
    try:
        return load_for_tagging(path, size)
    except BadImageError as exc:
        return str(exc)


def _prefetch(pool: Executor | None, fn, items: list, ahead: int) -> Iterator[tuple[Any, Any]]:
    """(item, fn(item)) in order, with at most `ahead` calls running in `pool` (serial without one)."""
    if pool is None:
        yield from ((item, fn(item)) for item in items)
        return
    pending: deque = deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= ahead:
            first, future = pending.popleft()
            yield first, future.result()
    while pending:
        first, future = pending.popleft()
        yield first, future.result()


def _batches(pairs: Iterator, size: int) -> Iterator[list]:
    batch = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch

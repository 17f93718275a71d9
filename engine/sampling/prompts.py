"""Sample prompts as sd-scripts reads them, and when a training run samples.

A prompt line is the prompt followed by kohya's inline options, each introduced by " --":
`a photo of ohwx man --w 768 --h 768 --s 20 --d 42 --g 3.5 --l 1.0 --n blurry`.
`sample_prompts` holds either such lines (our presets and the kohya_ss GUI keep the text) or
the path of a .txt, .toml or .json file of them (sd-scripts' --sample_prompts).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from engine.schema import KOHYA_SAMPLERS

# sd-scripts' FLUX defaults for a line without the option.
DEFAULT_SIZE = 512
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 3.5
DEFAULT_CFG = 1.0
PROMPT_FILE_SUFFIXES = (".txt", ".toml", ".json")



class SamplePromptError(ValueError):
    """A sample prompt that cannot be used; the message names the line and what to do."""


@dataclass(frozen=True)
class SamplePrompt:
    index: int  # position in the list: the `{index:02d}` of the file name
    prompt: str
    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    steps: int = DEFAULT_STEPS
    seed: int = 0
    guidance: float = DEFAULT_GUIDANCE  # FLUX.1-dev's distilled guidance (--g)
    cfg_scale: float = DEFAULT_CFG  # true classifier-free guidance (--l); 1 = off
    negative: str = ""


def sampler_note(name: str) -> str | None:
    """What a kohya sampler name means here; None when it is plainly flow-matching Euler."""
    if name.lower() in ("euler", "k_euler"):
        return None
    if name.lower() in KOHYA_SAMPLERS:
        return (f"sample_sampler {name!r} is read as 'euler': FLUX samples with flow-matching Euler "
                "(sd-scripts does the same for FLUX)")
    raise SamplePromptError(f"sample_sampler: {name!r} is not a sampler; use 'euler'")


_OPTION = re.compile(r"^(w|h|s|d|g|l|n|ss)\s+(.*)$", re.IGNORECASE | re.DOTALL)


def parse_prompt_line(line: str, index: int, default_seed: int, where: str = "sample_prompts") -> SamplePrompt:
    """One line in kohya's format; options not given take sd-scripts' FLUX defaults, and the
    seed defaults to `default_seed` so every epoch's image of this prompt is comparable."""
    prompt, *options = line.strip().split(" --")
    fields: dict = {"seed": default_seed}
    for option in options:
        match = _OPTION.match(option.strip())
        if not match:
            raise SamplePromptError(f"{where}, prompt {index + 1}: option --{option.strip()} is not one of "
                                    "--w --h --s --d --g --l --n --ss")
        name, text = match.group(1).lower(), match.group(2).strip()
        fields.update(_option_value(name, text, f"{where}, prompt {index + 1}"))
    if not prompt.strip():
        raise SamplePromptError(f"{where}, prompt {index + 1}: the prompt text is empty")
    return _finish(SamplePrompt(index=index, prompt=prompt.strip(), **fields))


def _option_value(name: str, text: str, where: str) -> dict:
    try:
        if name == "w":
            return {"width": int(text)}
        if name == "h":
            return {"height": int(text)}
        if name == "s":
            return {"steps": int(text)}
        if name == "d":
            return {"seed": int(text)}
        if name == "g":
            return {"guidance": float(text)}
        if name == "l":
            return {"cfg_scale": float(text)}
    except ValueError:
        kind = "a number" if name in ("g", "l") else "a whole number"
        raise SamplePromptError(f"{where}: --{name} {text!r} is not {kind}") from None
    if name == "n":
        return {"negative": text}
    sampler_note(text)  # --ss: refuse unknown names; known ones all mean Euler
    return {}


def _finish(prompt: SamplePrompt) -> SamplePrompt:
    """sd-scripts' rounding: sides down to a multiple of 16, at least 64; 1 to 1000 steps."""
    from dataclasses import replace

    if prompt.seed < 0:
        raise SamplePromptError(f"sample_prompts, prompt {prompt.index + 1}: --d {prompt.seed} is negative")
    return replace(prompt, width=max(64, prompt.width - prompt.width % 16),
                   height=max(64, prompt.height - prompt.height % 16), steps=max(1, min(1000, prompt.steps)))


def prompt_lines(source: str) -> tuple[list[str], str]:
    """(lines, where) of the sample_prompts value: the text itself, or the file it names."""
    text = source.strip()
    if not text:
        return [], "sample_prompts"
    single = "\n" not in text
    if single and text.strip('"').lower().endswith(PROMPT_FILE_SUFFIXES):
        path = Path(text.strip('"'))
        if not path.is_file():
            raise SamplePromptError(f"sample_prompts: file {path} not found")
        return _file_lines(path), str(path)
    return _text_lines(text), "sample_prompts"


def _text_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _file_lines(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _text_lines(text)
    try:
        if suffix == ".json":
            entries = json.loads(text)
        else:
            import tomllib

            entries = tomllib.loads(text).get("prompt", [])
    except ValueError as exc:
        raise SamplePromptError(f"sample_prompts: {path} cannot be read: {exc}") from None
    if isinstance(entries, dict):  # toml: [prompt] defaults with [[prompt.subset]] entries
        shared = {key: value for key, value in entries.items() if key != "subset"}
        entries = [dict(shared, **entry) if isinstance(entry, dict) else entry for entry in entries.get("subset", [])]
    if not isinstance(entries, list):
        raise SamplePromptError(f"sample_prompts: {path} holds no list of prompts")
    return [_dict_line(entry, path) for entry in entries]


def _dict_line(entry, path: Path) -> str:
    """A .json/.toml prompt entry (sd-scripts' keys) as a prompt line."""
    if not isinstance(entry, dict) or not str(entry.get("prompt", "")).strip():
        raise SamplePromptError(f"sample_prompts: {path}: every entry needs a 'prompt'")
    keys = {"width": "w", "height": "h", "sample_steps": "s", "seed": "d", "guidance_scale": "g", "scale": "l",
            "negative_prompt": "n"}
    options = "".join(f" --{short} {entry[key]}" for key, short in keys.items() if entry.get(key) not in (None, ""))
    return str(entry["prompt"]).strip() + options


def load_sample_prompts(values: dict) -> list[SamplePrompt]:
    """The preset's sample prompts; prompt i without --d gets seed `seed + i`."""
    lines, where = prompt_lines(values["sample_prompts"])
    return [parse_prompt_line(line, index, values["seed"] + index, where) for index, line in enumerate(lines)]


def sampling_enabled(values: dict) -> bool:
    return bool(values["sample_prompts"].strip()) and bool(
        values["sample_every_n_epochs"] or values["sample_every_n_steps"] or values["sample_at_first"])


def due(values: dict, step: int, epoch_end: int | None) -> bool:
    """Whether sd-scripts would sample now: after optimizer step `step`, at the end of epoch
    `epoch_end` (None mid-epoch). Epochs win over steps when both are set, as in sd-scripts."""
    every_epochs, every_steps = values["sample_every_n_epochs"], values["sample_every_n_steps"]
    if every_epochs:
        return epoch_end is not None and epoch_end % every_epochs == 0
    return bool(every_steps) and step % every_steps == 0


def sample_file_name(output_name: str, prompt: SamplePrompt, stamp: str, *, epoch: int | None, step: int) -> str:
    """kohya's name: {output_name}_{e000003 or 000120}_{index:02d}_{YYYYmmddHHMMSS}_{seed}.png"""
    when = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    return f"{output_name}_{when}_{prompt.index:02d}_{stamp}_{prompt.seed}.png"


def sample_problems(values: dict) -> list[str]:
    """Why the sample settings could not be used (bad prompt lines, a missing prompt file, samples
    asked for without a prompt), checked before anything loads."""
    try:
        prompts = load_sample_prompts(values)
    except (SamplePromptError, OSError) as exc:
        return [str(exc)]
    asked = values["sample_every_n_epochs"] or values["sample_every_n_steps"] or values["sample_at_first"]
    if asked and not prompts:
        return ["sample_prompts: empty, but sample images are asked for; write a prompt per line, or set "
                "sample_every_n_epochs, sample_every_n_steps to 0 and untick sample_at_first"]
    return []

"""The preflight: everything that can be known before a run loads anything, in seconds.

Reads only preset values, file headers and small files: model files (kind, integrity, fit),
tokenizers, the dataset and its captions, the state to continue from, the output folder (another
run in it, a finished run of the same name), folders writable, free disk for what the run
writes, optimizer arguments. Every problem comes back at once, each starting with the key it is
about ("key: ..."); `engine.messages.labelled` turns that into the page's field labels.
`engine.trainer.train` runs it first; the CLI and the page's Check button show it alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.preflight.checks import (check_dataset, check_folders, check_optimizer, check_outputs, check_resume,
                                     check_disk)
from engine.preflight.models import check_lora_file, check_model_files, check_tokenizers
from engine.preset import validate_values


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)  # any of these stops the run
    warnings: list[str] = field(default_factory=list)  # worth knowing; the run goes ahead
    notes: list[str] = field(default_factory=list)  # facts, e.g. how much disk the run writes
    existing_run: object | None = None  # engine.training.outputs.ExistingRun, when Start would replace one
    busy: object | None = None  # engine.training.lock.LockInfo of a live run in the output folder
    steps_per_epoch: int | None = None
    start_step: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def preflight(values: dict, overwrite: bool = False) -> Report:
    """Every reason `train(values)` would fail early, plus warnings and notes; loads no model."""
    report = Report(problems=validate_values(values))
    if any(problem.endswith(": missing") for problem in report.problems):
        return report  # not a whole preset; the checks below need every key
    bad = {problem.split(":", 1)[0] for problem in report.problems}
    models, headers = check_model_files(values)
    report.problems += models
    report.problems += check_tokenizers(values)
    samples = check_dataset(values, report, bad)
    report.problems += check_folders(values)
    if values["network_weights"] and not values["resume"]:
        if Path(values["network_weights"]).is_file():
            report.problems += check_lora_file("network_weights", values["network_weights"], values["network_dim"],
                                               Path(values["network_weights"]).name)
        else:
            report.problems.append(f"network_weights: file {values['network_weights']} not found")
    check_resume(values, report, samples)
    check_outputs(values, report, overwrite)
    if not bad & {"optimizer", "optimizer_args", "lr_scheduler", "lr_warmup_steps", "lr_warmup", "unet_lr",
                  "learning_rate", "text_encoder_lr"}:
        from engine.training.optim import optimizer_problems

        # sd-scripts' rules for the arguments first; then the library itself builds the optimizer.
        report.problems += optimizer_problems(values) or check_optimizer(values)
    if not bad & {"enable_bucket", "max_resolution", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps"}:
        from engine.training.buckets import bucket_problems

        report.problems += bucket_problems(values)
    if not bad & {"sample_prompts", "sample_every_n_epochs", "sample_every_n_steps", "sample_at_first"}:
        from engine.sampling.prompts import sample_problems

        report.problems += sample_problems(values)
    check_disk(values, report, headers, samples)
    if values["blocks_to_swap"] == "auto" and not report.problems:
        from engine.vram import auto_swap_problems

        report.problems += auto_swap_problems(values)  # refused before anything loads
    return report

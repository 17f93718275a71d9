"""What a run writes and reads back: LoRA files, state folders, and the state to resume from."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime
from pathlib import Path

from engine.events import SAVING
from engine.fsutil import atomic_dir
from engine.train_state import RunRecord, StateError, TrainState, fix_train_state, write_train_state
from engine.training.kohya_resume import is_kohya_state, load_kohya_state
from engine.training.outputs import link_tree, prune_epoch_states
from engine.training.reporting import RunReporter

ADAPTER_FILE = "adapter.safetensors"  # ours; kohya's state folders hold model.safetensors


def state_adapter_file(folder: Path) -> Path | None:
    for name in (ADAPTER_FILE, "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    return None


def preset_fingerprint(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def read_resume_state(resume_dir: Path | None, steps_per_epoch: int, reporter: RunReporter) -> TrainState:
    """The state to continue from (repaired when kohya's step counter was reset), or a fresh one."""
    if resume_dir is None:
        return TrainState(0, 0, steps_per_epoch, 0, [])
    try:  # kohya's files get their true step (the original kept as .bak); ambiguous ones are refused
        report = fix_train_state(resume_dir, steps_per_epoch)
    except StateError as exc:
        raise StateError(f"resume: {exc}") from None
    if report.changed:
        reporter.log(f"repaired {resume_dir.name}/train_state.json: current_step {report.before.current_step} -> "
                     f"{report.after.current_step} ({report.reason}); the original is train_state.json.bak",
                     "warning")
    state = report.after
    if state_adapter_file(resume_dir) is None:
        raise StateError(f"resume: {resume_dir} holds no LoRA weights (adapter.safetensors or model.safetensors)")
    return state


def load_optimizer_state(accelerator, model, resume_dir: Path, step: int, reporter: RunReporter) -> None:
    """Optimizer and schedule from the state folder; this run's learning rates replace the saved ones."""
    scheduler, optimizer = model.scheduler, model.optimizer
    rates = [group["initial_lr"] for group in optimizer.param_groups] if not _adafactor_schedule(scheduler) else None
    try:
        if is_kohya_state(resume_dir):
            from engine.models.lora import lora_named_parameters

            named = [lora_named_parameters(part) for part in (model.text_lora, accelerator.unwrap_model(
                model.transformer)) if part is not None]  # in the optimizer's group order
            loaded = load_kohya_state(model, named, resume_dir, step)
            reporter.log(f"kohya's state {resume_dir.name}: {', '.join(loaded)} loaded; continuing at step {step}")
        else:
            accelerator.load_state(str(resume_dir))
    except Exception as exc:  # another optimizer or rank: the LoRA still continues
        reporter.log(f"the optimizer state in {resume_dir.name} does not fit ({type(exc).__name__}: "
                     f"{str(exc)[:120]}); continuing with a fresh optimizer state", "warning")
        scheduler.last_epoch = step  # keep the learning-rate schedule where the run was
    if rates is None:
        return  # Adafactor's relative step sets its own rates from its state
    scheduler.base_lrs = list(rates)
    for group, lr_lambda, rate in zip(optimizer.param_groups, scheduler.lr_lambdas, rates):
        group["lr"] = lr_lambda(scheduler.last_epoch) * rate
        group["initial_lr"] = rate


def _adafactor_schedule(scheduler) -> bool:
    from transformers.optimization import AdafactorSchedule

    return isinstance(scheduler, AdafactorSchedule)


class Checkpointer:
    """Writes the LoRA files and state folders of one run, on the preset's cadence."""

    def __init__(self, values: dict, accelerator, model, reporter: RunReporter, resumed: TrainState,
                 steps_per_epoch: int, started_at: float):
        self.values = values
        self.output_dir = Path(values["output_dir"])
        self.name = values["output_name"]
        self.accelerator = accelerator
        self.model = model
        self.reporter = reporter
        self.earlier_runs = resumed.runs
        self.steps_per_epoch = steps_per_epoch
        self.started_at = started_at
        self.saved_states: dict[int, Path] = {}  # step -> the first state folder written at that step
        self.record = RunRecord(resumed.current_step, resumed.current_step,
                                datetime.now().isoformat(timespec="seconds"), "", preset_fingerprint(values))

    def periodic(self, step: int, total_steps: int) -> None:
        values, name = self.values, self.name
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        if step_in_epoch == 0 and values["save_every_n_epochs"] and epoch % values["save_every_n_epochs"] == 0:
            self.save_lora(f"{name}-{epoch:06d}.safetensors", step, total_steps)
            if values["save_state"]:
                self.save_state(f"{name}-{epoch:06d}-state", step, total_steps)
                keep = values["save_last_n_epochs_state"]
                for removed in prune_epoch_states(self.output_dir, name, keep) if self.accelerator.is_main_process else ():
                    self.reporter.log(f"removed {removed.name} (Keep last N epoch states: {keep})")
        if values["save_every_n_steps"] and step % values["save_every_n_steps"] == 0:
            self.save_lora(f"{name}-step{step:08d}.safetensors", step, total_steps)
            if values["save_state"]:
                self.save_state(f"{name}-step{step:08d}-state", step, total_steps)

    def final(self, step: int, total_steps: int) -> tuple[Path, Path | None]:
        lora = self.save_lora(f"{self.name}.safetensors", step, total_steps, final=True)
        state = None
        if self.values["save_state"] or self.values["save_state_on_train_end"]:
            state = self.save_state(f"{self.name}-state", step, total_steps)
        return lora, state

    def save_lora(self, file_name: str, step: int, total_steps: int, final: bool = False) -> Path:
        from engine.models.lora import save_lora
        from engine.models.lora_metadata import build_metadata

        path = self.output_dir / file_name
        if self.accelerator.is_main_process:
            self.reporter.progress(SAVING, step, total_steps)
            metadata = build_metadata(self.values, epoch=step // self.steps_per_epoch, steps=step,
                                      started_at=self.started_at, finished_at=time.time() if final else None)
            save_lora(self._unwrapped(), path, precision=self.values["save_precision"], metadata=metadata,
                      mem_eff=self.values["mem_eff_save"])
            self.reporter.log(f"saved {path.name}")
        self.accelerator.wait_for_everyone()
        return path

    def save_state(self, folder_name: str, step: int, total_steps: int) -> Path:
        from engine.models.lora import save_lora

        path = self.output_dir / folder_name
        self.reporter.progress(SAVING, step, total_steps)
        self.record.end_step = step
        self.record.finished_at = datetime.now().isoformat(timespec="seconds")
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        state = TrainState(current_epoch=epoch, current_step=step, steps_per_epoch=self.steps_per_epoch,
                           step_in_epoch=step_in_epoch, runs=self.earlier_runs + [self.record])
        same = self.saved_states.get(step)
        if self.accelerator.is_main_process and same is not None and same.is_dir():
            with atomic_dir(path) as temporary:  # this step's state, already saved under an epoch/step name
                link_tree(same, temporary)
            self.reporter.log(f"saved state {path.name} (step {step})")
        elif self.accelerator.is_main_process:
            with atomic_dir(path) as temporary:
                self.accelerator.save_state(str(temporary))
                save_lora(self._unwrapped(), temporary / ADAPTER_FILE, precision="float", mem_eff=True)
                write_train_state(temporary, state)
            self.reporter.log(f"saved state {path.name} (step {step})")
        self.saved_states.setdefault(step, path)
        self.accelerator.wait_for_everyone()
        return path

    def _unwrapped(self):
        """The LoRA's models: the transformer, and CLIP-L when it trains too."""
        return self.accelerator.unwrap_model(self.model.transformer), self.model.text_lora

"""One training run, from loading the models to the last saved file. Use engine.trainer.train.

The parts, in the order a run uses them: reporting (log, events, TensorBoard), data (samples and
buckets), checkpoint (the state to resume from; LoRA and state saving), text and latents (encoders
and caches), model_setup (transformer, LoRA, swap, optimizer), step (the flow-matching step).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from engine.events import LOADING, TRAINING, Finished
from engine.training.checkpoint import Checkpointer, load_optimizer_state, read_resume_state, state_adapter_file
from engine.training.data import epoch_batches, load_samples, process_batches, steps_in_epoch
from engine.training.latents import LatentEncoding
from engine.training.model_setup import load_transformer_with_lora, prepare_for_training
from engine.training.optim import optimizer_notes
from engine.training.placement import EncoderPlacement, make_accelerator, settle_memory
from engine.training.reporting import RunReporter
from engine.training.sampling import TrainingSampler
from engine.training.step import FlowMatchingStep, NoiseSettings
from engine.training.text import TextEncoding
from engine.vram import swap_for_device

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


class TrainingRun:
    def __init__(self, values: dict, on_event, stop: threading.Event):
        self.values = values
        self.stop = stop
        self.reporter = RunReporter(on_event)
        self.step = 0  # cumulative optimizer steps
        self.completed_epochs = 0

    @property
    def log_path(self) -> Path | None:
        return self.reporter.log_path

    def log(self, text: str, level: str = "info") -> None:
        self.reporter.log(text, level)

    def close(self) -> None:
        self.reporter.close()

    def result(self, status: str, message: str, lora: Path | None = None, state: Path | None = None) -> Finished:
        return Finished(status, message=message, lora_path=str(lora or ""), state_dir=str(state or ""),
                        log_path=str(self.log_path or ""), steps=self.step, epoch=self.completed_epochs)

    def execute(self) -> Finished:
        from accelerate.utils import set_seed

        settle_memory()
        self._start_accelerator()
        values = self.values = swap_for_device(self.values, self.device, self.log)
        set_seed(values["seed"])
        started_at = time.time()
        self.reporter.progress(LOADING, 0, 0)
        self.samples = load_samples(values, on_skip=lambda text: self.log(text, "warning"))
        self.sampler = TrainingSampler(values, self.reporter, self.stop)
        batch, accumulation = values["train_batch_size"], values["gradient_accumulation_steps"]
        self.steps_per_epoch = steps_in_epoch(self.samples, batch, accumulation, self.accelerator.num_processes)
        self.total_steps = values["max_train_steps"] or values["epoch"] * self.steps_per_epoch
        self.total_epochs = -(-self.total_steps // self.steps_per_epoch)
        self.log(f"{len(self.samples)} images, {sum(s.repeats for s in self.samples)} with repeats, "
                 f"{self.steps_per_epoch} steps per epoch, {self.total_steps} steps in all")
        resume_dir = Path(values["resume"]) if values["resume"] else None
        resumed = read_resume_state(resume_dir, self.steps_per_epoch, self.reporter)
        self.step = resumed.current_step
        self.completed_epochs = self.step // self.steps_per_epoch
        if self.step >= self.total_steps:
            message = (f"already trained {self.step} steps (epoch {self.completed_epochs}); raise Epochs above "
                       f"{self.completed_epochs} to continue")
            self.log(message, "warning")
            return self.result("completed", message)

        if not self._prepare(resume_dir):  # loading and caching take minutes: a stop need not wait for them
            message = "stopped before training started; nothing was saved (cached entries are kept)"
            self.log(message, "warning")
            return self.result("stopped", message)
        self.checkpoints = Checkpointer(values, self.accelerator, self.model, self.reporter, resumed,
                                        self.steps_per_epoch, started_at)
        status = self._train_loop()
        lora_path, state_dir = self.checkpoints.final(self.step, self.total_steps)
        message = (f"trained to step {self.step} (epoch {self.completed_epochs}); LoRA: {lora_path}"
                   if status == "completed" else f"stopped at step {self.step}; LoRA: {lora_path}")
        self.log(message)
        return self.result(status, message, lora_path, state_dir)

    def _start_accelerator(self) -> None:
        from accelerate.state import AcceleratorState, GradientState

        cuda = torch.cuda.is_available()
        precision = self.values["mixed_precision"]
        if not cuda and precision == "fp16":
            precision = "no"  # fp16 autocast needs a GPU; the CPU computes in float32 instead
        # accelerate keeps its settings in process-wide singletons; each run (the GUI starts
        # many in one process) sets its own precision, so the previous run's settings go.
        AcceleratorState._reset_state()
        GradientState._reset_state()
        self.accelerator = make_accelerator(not cuda, precision)
        self.device = self.accelerator.device
        self.compute_dtype = _DTYPES[precision]
        values = self.values
        log_dir = Path(values["logging_dir"] or Path(values["output_dir"]) / "log")
        self.reporter.open(log_dir, values["output_name"], self.accelerator.is_main_process)
        processes = f" x {self.accelerator.num_processes} processes" if self.accelerator.num_processes > 1 else ""
        self.log(f"FluxLoRA training {values['output_name']} on {self.device}{processes}, computing in "
                 f"{str(self.compute_dtype).removeprefix('torch.')}")
        if not cuda:
            self.log("no CUDA GPU found: training on the CPU, which is very slow", "warning")

    def _prepare(self, resume_dir: Path | None) -> bool:
        """Text outputs, latents, then the transformer; False when a stop came in between."""
        values = self.values
        placement = EncoderPlacement(self.device, values["highvram"])
        self.text = TextEncoding(values, placement, self.reporter, self.stop)
        self.text.prepare(self.samples, also=self.sampler.encode)  # sample prompts too, before T5 goes
        if self.stop.is_set():
            return False
        self.latents = LatentEncoding(values, placement, self.reporter, self.stop, keep_for_decoding=self.sampler.enabled)
        self.latents.prepare(self.samples)
        if self.stop.is_set():
            return False
        adapter = state_adapter_file(resume_dir) if resume_dir is not None else None
        if adapter is not None:
            self.log(f"continuing from {resume_dir.name} (step {self.step}); LoRA weights from {adapter.name}")
        transformer, swapper = load_transformer_with_lora(values, self.device, self.compute_dtype, adapter,
                                                          self.reporter, self.text.clip_lora)
        self.model = prepare_for_training(self.accelerator, transformer, swapper, values, self.total_steps,
                                          self.text.clip_lora)
        if self.model.text_encoder is not None:
            self.text.clip = self.model.text_encoder
        for note in optimizer_notes(values):
            self.log(note, "warning")
        if resume_dir is not None:
            load_optimizer_state(self.accelerator, self.model, resume_dir, self.step, self.reporter)
        self.trainer_step = FlowMatchingStep(NoiseSettings.from_values(values), self.accelerator, self.model,
                                             self.latents, self.text, self.compute_dtype)
        return not self.stop.is_set()

    def _epoch_groups(self, epoch: int) -> list[list[list[int]]]:
        """This process's optimizer steps of `epoch`: groups of `gradient_accumulation_steps` batches."""
        values, accelerator = self.values, self.accelerator
        accumulation = values["gradient_accumulation_steps"]
        batches = epoch_batches(self.samples, values["train_batch_size"], values["seed"], epoch)
        batches = process_batches(batches, accelerator.process_index, accelerator.num_processes)
        groups = [batches[i:i + accumulation] for i in range(0, len(batches), accumulation)]
        return groups[:self.steps_per_epoch]

    def _train_loop(self) -> str:
        self.log(f"training from step {self.step} to {self.total_steps}")
        run_start, run_start_step = time.time(), self.step
        epoch_losses: list[float] = []
        self.sampler.attach(self)
        self.sampler.at_first(self.step, self.steps_per_epoch)
        while self.step < self.total_steps:
            epoch = self.step // self.steps_per_epoch + 1
            first = self.step - (epoch - 1) * self.steps_per_epoch
            if first == 0:
                epoch_losses = []
            for group in self._epoch_groups(epoch)[first:]:
                loss = self.trainer_step.run([[self.samples[i] for i in batch] for batch in group], self.step)
                epoch_losses.append(loss)
                self.step += 1
                self._report_step(epoch, loss, sum(epoch_losses) / len(epoch_losses), run_start, run_start_step)
                self.checkpoints.periodic(self.step, self.total_steps)  # the last epoch too: Continue keeps it
                self.sampler.after_step(self.step, self.completed_epochs if self.step % self.steps_per_epoch == 0 else None)
                if self.step >= self.total_steps:
                    break
                if self.stop.is_set():
                    self.log("stop requested: saving and stopping", "warning")
                    return "stopped"
        return "completed"

    def _report_step(self, epoch: int, loss: float, average: float, run_start: float, run_start_step: int) -> None:
        elapsed = time.time() - run_start
        rate = (self.step - run_start_step) / elapsed if elapsed > 0 else None
        rates = self.model.scheduler.get_last_lr()
        lr = rates[-1]  # the transformer's group (a training CLIP-L's comes first, as in sd-scripts)
        self.reporter.progress(TRAINING, self.step, self.total_steps, epoch=epoch, total_epochs=self.total_epochs,
                               loss=loss, average_loss=average, lr=lr, steps_per_second=rate,
                               eta_seconds=(self.total_steps - self.step) / rate if rate else None)
        text_lr = {"lr__textencoder": rates[0]} if len(rates) > 1 else {}
        self.reporter.scalars(self.step, loss__current=loss, loss__average=average, lr__unet=lr, **text_lr)
        if self.step % self.steps_per_epoch == 0:
            self.completed_epochs = self.step // self.steps_per_epoch
            self.log(f"epoch {self.completed_epochs} done, average loss {average:.5f}")

"""One training run, from loading the models to the last saved file. Use engine.trainer.train."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path

import torch

from engine.dataset.images import open_image_rgb
from engine.events import (CACHING_LATENTS, CACHING_TEXT, LOADING, SAVING, TRAINING, Log, Progress, emit)
from engine.fsutil import atomic_dir
from engine.train_state import RunRecord, StateError, TrainState, expected_step, fix_train_state, read_train_state, write_train_state
from engine.training import flow
from engine.training.cache import CACHE_FOLDER, EntryCache, bytes_digest, entry_key, file_identity
from engine.training.data import Sample, epoch_batches, fit_to_bucket, load_samples, steps_in_epoch
from engine.training.optim import create_optimizer, create_scheduler

ADAPTER_FILE = "adapter.safetensors"  # ours; kohya's state folders hold model.safetensors
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


class TrainingRun:
    def __init__(self, values: dict, on_event, stop: threading.Event):
        self.values = values
        self.on_event = on_event
        self.stop = stop
        self.step = 0  # cumulative optimizer steps
        self.completed_epochs = 0
        self.log_path: Path | None = None
        self._log_file = None
        self._writer = None

    # ---- reporting --------------------------------------------------------------------
    def log(self, text: str, level: str = "info") -> None:
        if not self._is_main():
            return
        if self._log_file is not None:
            self._log_file.write(f"{datetime.now():%H:%M:%S} {level}: {text}\n")
            self._log_file.flush()
        emit(self.on_event, Log(text, level))

    def log_exception(self, exc: BaseException) -> None:
        if self._log_file is not None:
            self._log_file.write("".join(traceback.format_exception(exc)))
        self.log(f"{type(exc).__name__}: {exc}", "error")

    def _is_main(self) -> bool:
        accelerator = getattr(self, "accelerator", None)
        return accelerator is None or accelerator.is_main_process

    def progress(self, phase: str, done: int, total: int, **fields) -> None:
        if not self._is_main():
            return
        emit(self.on_event, Progress(phase, done, total, **fields))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _open_logs(self) -> None:
        values = self.values
        log_dir = Path(values["logging_dir"] or Path(values["output_dir"]) / "log")
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        if self.accelerator.is_main_process:
            self.log_path = log_dir / f"{values['output_name']}_{stamp}.log"
            self._log_file = open(self.log_path, "a", encoding="utf-8")
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(log_dir / f"{values['output_name']}_{stamp}"))

    # ---- the run ----------------------------------------------------------------------
    def execute(self):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState
        from accelerate.utils import set_seed

        from engine.trainer import TrainResult

        values = self.values
        cuda = torch.cuda.is_available()
        precision = values["mixed_precision"]
        if not cuda and precision == "fp16":
            precision = "no"  # fp16 autocast needs a GPU; the CPU computes in float32 instead
        # accelerate keeps its settings in process-wide singletons; each run (the GUI starts
        # many in one process) sets its own precision, so the previous run's settings go.
        AcceleratorState._reset_state()
        GradientState._reset_state()
        self.accelerator = Accelerator(cpu=not cuda, mixed_precision=precision)
        self.device = self.accelerator.device
        self.compute_dtype = _DTYPES[precision]
        self._open_logs()
        processes = f" x {self.accelerator.num_processes} processes" if self.accelerator.num_processes > 1 else ""
        self.log(f"FluxLoRA training {values['output_name']} on {self.device}{processes}, computing in "
                 f"{str(self.compute_dtype).removeprefix('torch.')}")
        if not cuda:
            self.log("no CUDA GPU found: training on the CPU, which is very slow", "warning")
        set_seed(values["seed"])
        self.started_at = time.time()

        self.samples = self._load_samples()
        from engine.training.sampling import TrainingSampler

        self.sampler = TrainingSampler(self)
        batch, accumulation = values["train_batch_size"], values["gradient_accumulation_steps"]
        self.steps_per_epoch = steps_in_epoch(self.samples, batch, accumulation, self.accelerator.num_processes)
        self.total_steps = values["max_train_steps"] or values["epoch"] * self.steps_per_epoch
        self.total_epochs = -(-self.total_steps // self.steps_per_epoch)
        self.log(f"{len(self.samples)} images, {sum(s.repeats for s in self.samples)} with repeats, "
                 f"{self.steps_per_epoch} steps per epoch, {self.total_steps} steps in all")
        self.state = self._read_resume_state()
        self.step = self.state.current_step
        self.completed_epochs = self.step // self.steps_per_epoch
        if self.step >= self.total_steps:
            message = (f"already trained {self.step} steps (epoch {self.completed_epochs}); raise Epochs above "
                       f"{self.completed_epochs} to continue")
            self.log(message, "warning")
            return TrainResult("completed", steps=self.step, epoch=self.completed_epochs,
                               log_path=str(self.log_path or ""), message=message)

        for prepare in (self._prepare_text, self._prepare_latents, self._load_transformer):
            prepare()
            if self.stop.is_set():  # loading and caching can take minutes: a stop need not wait for them
                message = "stopped before training started; nothing was saved (cached entries are kept)"
                self.log(message, "warning")
                return TrainResult("stopped", steps=self.step, epoch=self.completed_epochs,
                                   log_path=str(self.log_path or ""), message=message)
        status = self._train_loop()
        lora_path, state_dir = self._save_final(status)
        message = (f"trained to step {self.step} (epoch {self.completed_epochs}); LoRA: {lora_path}"
                   if status == "completed" else f"stopped at step {self.step}; LoRA: {lora_path}")
        self.log(message)
        return TrainResult(status, lora_path=str(lora_path), state_dir=str(state_dir or ""), steps=self.step,
                           epoch=self.completed_epochs, log_path=str(self.log_path or ""), message=message)

    # ---- data -------------------------------------------------------------------------
    def _load_samples(self) -> list[Sample]:
        self.progress(LOADING, 0, 0)
        return load_samples(self.values, on_skip=lambda text: self.log(text, "warning"))

    def _cache(self, kind: str, to_disk: bool) -> EntryCache:
        folder = Path(self.values["train_data_dir"]) / CACHE_FOLDER / kind if to_disk else None
        return EntryCache(folder)

    @contextlib.contextmanager
    def _visiting(self, model):
        """Without highvram an uncached encoder lives in RAM and visits the GPU for each batch."""
        if self.values["highvram"] or self.device.type != "cuda":
            yield
            return
        model.to(self.device)
        try:
            yield
        finally:
            model.to("cpu")

    def _parking(self):
        return "cpu" if (self.device.type == "cuda" and not self.values["highvram"]) else self.device

    # ---- text encoders ----------------------------------------------------------------
    def _prepare_text(self) -> None:
        from engine.models.text_encoders import load_clip_l, load_t5, load_tokenizers

        values = self.values
        self.progress(LOADING, 0, 0)
        self.log("loading tokenizers and text encoders")
        self.clip_tokenizer, self.t5_tokenizer = load_tokenizers(values["clip_l_tokenizer_path"],
                                                                 values["t5xxl_tokenizer_path"])
        te_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.clip = load_clip_l(values["clip_l"], te_dtype).to(self.device)
        self.t5 = load_t5(values["t5xxl"], te_dtype).to(self.device)
        self.sampler.encode(self._encode_text)  # now, so T5 never has to come back for samples
        identity = dict(clip=file_identity(values["clip_l"]), t5=file_identity(values["t5xxl"]),
                        clip_tok=values["clip_l_tokenizer_path"] or "standard",
                        t5_tok=values["t5xxl_tokenizer_path"] or "standard",
                        t5_len=values["t5xxl_max_token_length"])
        self.text_key = lambda caption: entry_key(kind="text", caption=caption, **identity)  # noqa: E731
        self.text_cache = self._cache("text", values["flux1_cache_text_encoder_outputs_to_disk"])
        if not values["flux1_cache_text_encoder_outputs"]:
            self.clip.to(self._parking())
            self.t5.to(self._parking())
            return
        captions = sorted({sample.caption for sample in self.samples})
        computed = 0
        for index, caption in enumerate(captions):
            if self.stop.is_set():
                return
            if self.text_cache.get(self.text_key(caption)) is None:
                self.text_cache.put(self.text_key(caption), self._encode_text([caption], squeeze=True))
                computed += 1
            self.progress(CACHING_TEXT, index + 1, len(captions))
        self.log(f"text cache: {computed} computed, {len(captions) - computed} reused")
        if not values["highvram"]:
            del self.clip, self.t5
            self.clip = self.t5 = None
            _free_memory()

    @torch.no_grad()
    def _encode_text(self, captions: list[str], squeeze: bool = False) -> dict[str, torch.Tensor]:
        clip_ids = self.clip_tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                                       return_tensors="pt").input_ids.to(self.device)
        t5 = self.t5_tokenizer(captions, padding="max_length", max_length=self.values["t5xxl_max_token_length"],
                               truncation=True, return_tensors="pt")
        pooled = self.clip(clip_ids).pooler_output.float()
        sequence = self.t5(t5.input_ids.to(self.device)).last_hidden_state.float()
        out = {"pooled": pooled, "t5": sequence, "mask": t5.attention_mask.to(self.device)}
        return {k: v[0] for k, v in out.items()} if squeeze else out

    def _text_batch(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        if not self.values["flux1_cache_text_encoder_outputs"]:
            with self._visiting(self.clip), self._visiting(self.t5):
                return self._encode_text([s.caption for s in samples])
        entries = [self.text_cache.get(self.text_key(s.caption)) for s in samples]
        return {k: torch.stack([e[k] for e in entries]).to(self.device) for k in ("pooled", "t5", "mask")}

    # ---- latents ----------------------------------------------------------------------
    def _prepare_latents(self) -> None:
        from engine.models.autoencoder import load_autoencoder

        values = self.values
        self.log("loading the autoencoder")
        vae_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.vae = load_autoencoder(values["ae"], vae_dtype).to(self.device)
        vae_id = file_identity(values["ae"])
        digests = {}

        def key(sample: Sample) -> str:
            if sample.image_path not in digests:
                digests[sample.image_path] = bytes_digest(sample.image_path)
            return entry_key(kind="latent", image=digests[sample.image_path], bucket=sample.bucket, vae=vae_id)

        self.latent_key = key
        self.latent_cache = self._cache("latents", values["cache_latents_to_disk"])
        if not values["cache_latents"]:
            self.vae.to(self._parking())
            return
        computed = 0
        for index, sample in enumerate(self.samples):
            if self.stop.is_set():
                return
            if self.latent_cache.get(key(sample)) is None:
                self.latent_cache.put(key(sample), {"latent": self._encode_images([sample])[0]})
                computed += 1
            self.progress(CACHING_LATENTS, index + 1, len(self.samples))
        self.log(f"latent cache: {computed} computed, {len(self.samples) - computed} reused")
        if self.sampler.enabled:
            self.vae.to(self._parking())  # kept (in RAM without highvram) to decode sample images
        elif not values["highvram"]:
            del self.vae
            self.vae = None
            _free_memory()

    @torch.no_grad()
    def _encode_images(self, samples: list[Sample]) -> torch.Tensor:
        import numpy as np

        pixels = []
        for sample in samples:
            with open_image_rgb(sample.image_path) as image:
                fitted = fit_to_bucket(image, sample.bucket)
            array = torch.from_numpy(np.asarray(fitted, dtype=np.float32)).permute(2, 0, 1)
            pixels.append(array / 127.5 - 1.0)
        batch = torch.stack(pixels).to(self.device, self.vae.dtype)
        latents = self.vae.encode(batch).latent_dist.mode().float()
        return (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def _latent_batch(self, samples: list[Sample]) -> torch.Tensor:
        if not self.values["cache_latents"]:
            with self._visiting(self.vae):
                return self._encode_images(samples)
        return torch.stack([self.latent_cache.get(self.latent_key(s))["latent"] for s in samples]).to(self.device)

    # ---- transformer and LoRA ---------------------------------------------------------
    def _load_transformer(self) -> None:
        from engine.models.flux import load_flux_transformer
        from engine.models.lora import add_lora, load_lora, lora_parameters

        values = self.values
        self.progress(LOADING, 0, 0)
        fp8 = values["fp8_base"] or values["fp8_base_unet"]
        self.log(f"loading the transformer{' in fp8' if fp8 else ''}")
        swap = values["blocks_to_swap"]
        self.swapper = None
        transformer = load_flux_transformer(values["pretrained_model_name_or_path"], fp8=fp8,
                                            compute_dtype=self.compute_dtype, device="cpu" if swap else self.device)
        self.has_guidance = transformer.config.guidance_embeds
        torch.manual_seed(values["seed"])  # the LoRA's initial weights
        add_lora(transformer, values["network_dim"], values["network_alpha"], values["train_blocks"])
        if values["full_bf16"]:
            for parameter in lora_parameters(transformer):
                parameter.data = parameter.data.to(torch.bfloat16)
        if self.resume_dir is not None:
            adapter = _state_adapter_file(self.resume_dir)
            self.log(f"continuing from {self.resume_dir.name} (step {self.step}); LoRA weights from {adapter.name}")
            load_lora(transformer, adapter)
        elif values["network_weights"]:
            self.log(f"starting from LoRA {values['network_weights']}")
            load_lora(transformer, values["network_weights"])
        if values["gradient_checkpointing"]:
            transformer.enable_gradient_checkpointing()
        if swap:
            from engine.offload import BlockSwapper

            self.swapper = BlockSwapper(transformer, swap, self.device)
            BlockSwapper.move_rest(transformer, self.device)
            double = sum(1 for block in self.swapper.swapped if block in transformer.transformer_blocks)
            self.log(f"blocks_to_swap {swap}: {double} double and {len(self.swapper.swapped) - double} single "
                     f"transformer blocks stay in system RAM and stream to {self.device}")
        transformer.train()
        self.params = lora_parameters(transformer)
        optimizer = create_optimizer(values, self.params)
        self.scheduler = create_scheduler(values, optimizer, self.total_steps)
        # With swapping the model is already placed block by block; accelerate must not move it whole.
        self.transformer, self.optimizer = self.accelerator.prepare(
            transformer, optimizer, device_placement=[not swap, True])
        self.accelerator.register_for_checkpointing(self.scheduler)
        # State folders hold only the LoRA (ours), never the frozen base model.
        self.accelerator.register_save_state_pre_hook(lambda models, weights, folder: weights.clear())
        self.accelerator.register_load_state_pre_hook(lambda models, folder: models.clear())
        if self.resume_dir is not None:
            self._load_optimizer_state()

    def _load_optimizer_state(self) -> None:
        try:
            self.accelerator.load_state(str(self.resume_dir))
        except Exception as exc:  # another optimizer, or kohya's layout: the LoRA still continues
            self.log(f"the optimizer state in {self.resume_dir.name} does not fit ({type(exc).__name__}: "
                     f"{str(exc)[:120]}); continuing with a fresh optimizer state", "warning")
            self.scheduler.last_epoch = self.step  # keep the learning-rate schedule where the run was
        # The saved schedule carries the old learning rate; this run's preset decides it.
        learning_rate = self.values["unet_lr"] or self.values["learning_rate"]
        self.scheduler.base_lrs = [learning_rate for _ in self.scheduler.base_lrs]
        rates = [lr_lambda(self.scheduler.last_epoch) * learning_rate for lr_lambda in self.scheduler.lr_lambdas]
        for group, value in zip(self.optimizer.param_groups, rates):
            group["lr"] = value
            group["initial_lr"] = learning_rate

    # ---- resume -----------------------------------------------------------------------
    def _read_resume_state(self) -> TrainState:
        self.resume_dir = Path(self.values["resume"]) if self.values["resume"] else None
        self.fingerprint = _fingerprint(self.values)
        if self.resume_dir is None:
            return TrainState(0, 0, self.steps_per_epoch, 0, [])
        state = read_train_state(self.resume_dir)
        if state.steps_per_epoch is not None and state.steps_per_epoch != self.steps_per_epoch:
            raise StateError(
                f"resume: {self.resume_dir.name} was trained at {state.steps_per_epoch} steps per epoch, this preset "
                f"gives {self.steps_per_epoch}; the dataset, repeats, batch size or gradient accumulation changed. "
                "Restore them, or start a new run without resume")
        step, reason = expected_step(state, self.steps_per_epoch)
        if step != state.current_step:
            report = fix_train_state(self.resume_dir, self.steps_per_epoch)
            self.log(f"repaired {self.resume_dir.name}/train_state.json: current_step {report.before.current_step} "
                     f"-> {report.after.current_step} ({reason}); the original is train_state.json.bak", "warning")
            state = report.after
        if _state_adapter_file(self.resume_dir) is None:
            raise StateError(f"resume: {self.resume_dir} holds no LoRA weights (adapter.safetensors or model.safetensors)")
        return state

    # ---- the loop ---------------------------------------------------------------------
    def _train_loop(self) -> str:
        values = self.values
        accumulation = values["gradient_accumulation_steps"]
        self.run_record = RunRecord(self.step, self.step, datetime.now().isoformat(timespec="seconds"), "",
                                    self.fingerprint)
        self.log(f"training from step {self.step} to {self.total_steps}")
        run_start, run_start_step = time.time(), self.step
        epoch_losses: list[float] = []
        self.sampler.at_first()
        while self.step < self.total_steps:
            epoch = self.step // self.steps_per_epoch + 1
            batches = epoch_batches(self.samples, values["train_batch_size"], values["seed"], epoch)
            batches = batches[self.accelerator.process_index::self.accelerator.num_processes]
            groups = [batches[i:i + accumulation] for i in range(0, len(batches), accumulation)]
            groups = groups[:self.steps_per_epoch]
            first = self.step - (epoch - 1) * self.steps_per_epoch
            if first == 0:
                epoch_losses = []
            for group in groups[first:]:
                loss = self._optimizer_step(group)
                epoch_losses.append(loss)
                self.step += 1
                elapsed = time.time() - run_start
                rate = (self.step - run_start_step) / elapsed if elapsed > 0 else None
                lr = self.scheduler.get_last_lr()[0]
                average = sum(epoch_losses) / len(epoch_losses)
                self.progress(TRAINING, self.step, self.total_steps, epoch=epoch, total_epochs=self.total_epochs,
                              loss=loss, average_loss=average, lr=lr, steps_per_second=rate,
                              eta_seconds=(self.total_steps - self.step) / rate if rate else None)
                if self._writer is not None:
                    self._writer.add_scalar("loss/current", loss, self.step)
                    self._writer.add_scalar("loss/average", average, self.step)
                    self._writer.add_scalar("lr/unet", lr, self.step)
                if self.step % self.steps_per_epoch == 0:
                    self.completed_epochs = self.step // self.steps_per_epoch
                    self.log(f"epoch {self.completed_epochs} done, average loss {average:.5f}")
                at_epoch_end = self.step % self.steps_per_epoch == 0
                self.sampler.after_step(self.step, self.completed_epochs if at_epoch_end else None)
                if self.step >= self.total_steps:
                    break
                self._periodic_saves()
                if self.stop.is_set():
                    self.log("stop requested: saving and stopping", "warning")
                    return "stopped"
        return "completed"

    def _optimizer_step(self, group: list[list[int]]) -> float:
        values = self.values
        accelerator = self.accelerator
        generator = torch.Generator().manual_seed(values["seed"] * 1_000_003 + self.step)
        total = 0.0
        for index, batch in enumerate(group):
            samples = [self.samples[i] for i in batch]
            last = index == len(group) - 1
            sync = accelerator.no_sync(self.transformer) if not last else contextlib.nullcontext()
            swap = self.swapper.forward_context() if self.swapper else contextlib.nullcontext()
            with sync, swap, accelerator.autocast():
                loss = self._loss(samples, generator) / len(group)
                accelerator.backward(loss)
            total += loss.detach().item()
        if values["max_grad_norm"] > 0:
            accelerator.clip_grad_norm_(self.params, values["max_grad_norm"])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _loss(self, samples: list[Sample], generator: torch.Generator) -> torch.Tensor:
        values = self.values
        latents = self._latent_batch(samples)
        text = self._text_batch(samples)
        batch, _, height, width = latents.shape
        x0 = flow.pack_latents(latents)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        sigmas = flow.sample_sigmas(values["timestep_sampling"], batch, generator, shift=values["discrete_flow_shift"],
                                    sigmoid_scale=values["sigmoid_scale"], image_tokens=x0.shape[1]).to(self.device)
        noisy = (1.0 - sigmas.view(-1, 1, 1)) * x0 + sigmas.view(-1, 1, 1) * noise
        dtype = self.compute_dtype
        kwargs = {}
        if values["apply_t5_attn_mask"]:
            image_mask = torch.ones(batch, x0.shape[1], dtype=torch.bool, device=self.device)
            mask = torch.cat([text["mask"].bool(), image_mask], dim=1)
            kwargs["joint_attention_kwargs"] = {"attention_mask": mask[:, None, None, :]}
        prediction = self.transformer(
            hidden_states=noisy.to(dtype), encoder_hidden_states=text["t5"].to(dtype),
            pooled_projections=text["pooled"].to(dtype), timestep=sigmas.to(dtype),
            img_ids=flow.image_ids(height, width).to(self.device), txt_ids=torch.zeros(text["t5"].shape[1], 3, device=self.device),
            guidance=torch.full((batch,), values["guidance_scale"], device=self.device, dtype=dtype)
            if self.has_guidance else None, **kwargs,
        ).sample
        prediction = flow.apply_prediction_type(values["model_prediction_type"], prediction.float(), noisy, sigmas)
        return torch.nn.functional.mse_loss(prediction, (noise - x0).float())

    # ---- saving -----------------------------------------------------------------------
    def _periodic_saves(self) -> None:
        values, name = self.values, self.values["output_name"]
        at_epoch_end = self.step % self.steps_per_epoch == 0
        epoch = self.step // self.steps_per_epoch
        if at_epoch_end and values["save_every_n_epochs"] and epoch % values["save_every_n_epochs"] == 0:
            self._save_lora(f"{name}-{epoch:06d}.safetensors")
            if values["save_state"]:
                self._save_state(f"{name}-{epoch:06d}-state")
        if values["save_every_n_steps"] and self.step % values["save_every_n_steps"] == 0:
            self._save_lora(f"{name}-step{self.step:08d}.safetensors")
            if values["save_state"]:
                self._save_state(f"{name}-step{self.step:08d}-state")

    def _save_final(self, status: str) -> tuple[Path, Path | None]:
        name = self.values["output_name"]
        lora = self._save_lora(f"{name}.safetensors", final=True)
        state = None
        if self.values["save_state"] or self.values["save_state_on_train_end"]:
            state = self._save_state(f"{name}-state")
        return lora, state

    def _save_lora(self, file_name: str, final: bool = False) -> Path:
        from engine.models.lora import build_metadata, save_lora

        path = Path(self.values["output_dir"]) / file_name
        if self.accelerator.is_main_process:
            self.progress(SAVING, self.step, self.total_steps)
            metadata = build_metadata(self.values, epoch=self.step // self.steps_per_epoch, steps=self.step,
                                      started_at=self.started_at, finished_at=time.time() if final else None)
            save_lora(self.accelerator.unwrap_model(self.transformer), path, precision=self.values["save_precision"],
                      metadata=metadata, mem_eff=self.values["mem_eff_save"])
            self.log(f"saved {path.name}")
        self.accelerator.wait_for_everyone()
        return path

    def _save_state(self, folder_name: str) -> Path:
        from engine.models.lora import save_lora

        path = Path(self.values["output_dir"]) / folder_name
        self.progress(SAVING, self.step, self.total_steps)
        self.run_record.end_step = self.step
        self.run_record.finished_at = datetime.now().isoformat(timespec="seconds")
        state = TrainState(current_epoch=self.step // self.steps_per_epoch, current_step=self.step,
                           steps_per_epoch=self.steps_per_epoch, step_in_epoch=self.step % self.steps_per_epoch,
                           runs=self.state.runs + [self.run_record])
        if self.accelerator.is_main_process:
            with atomic_dir(path) as temporary:
                self.accelerator.save_state(str(temporary))
                save_lora(self.accelerator.unwrap_model(self.transformer), temporary / ADAPTER_FILE,
                          precision="float", mem_eff=True)
                write_train_state(temporary, state)
            self.log(f"saved state {path.name} (step {self.step})")
        self.accelerator.wait_for_everyone()
        return path


def _state_adapter_file(folder: Path) -> Path | None:
    for name in (ADAPTER_FILE, "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    return None


def _fingerprint(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

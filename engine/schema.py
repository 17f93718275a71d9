"""Every training option, declared once.

The GUI builds its widgets from this table, the JSON loader validates against it, the CLI's
`--set` parses with it and the engine reads preset values by these keys. Keys are the kohya_ss
GUI names wherever kohya_ss has the option, so a kohya_ss FLUX config loads directly.

To add an option: add one `Option(...)` line below. Nothing else declares options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# GUI sections, in the order the GUI shows them.
MODEL = "Model"
FOLDERS = "Folders"
BASIC = "Parameters/Basic"
FLUX = "Parameters/Basic/Flux.1"
ADVANCED = "Parameters/Advanced"
SAMPLES = "Parameters/Samples"
DATASET = "Dataset Preparation"
SECTIONS = (MODEL, FOLDERS, BASIC, FLUX, ADVANCED, SAMPLES, DATASET)

# Value types. "file" and "dir" are strings holding a path as the user typed it
# (Windows `C:\...` stays so); the GUI shows a path box for them.
TYPES = ("bool", "int", "float", "str", "file", "dir")


@dataclass(frozen=True)
class Option:
    key: str
    type: str
    default: Any
    section: str
    label: str
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    # True when kohya_ss's GUI has this key with the same meaning (imports map it 1:1).
    kohya: bool = True
    # The ss_* key sd-scripts writes this value under in a LoRA's metadata (None: not written).
    metadata: str | None = None
    # An "int" option that also takes the text "auto" (FluxLoRA chooses the number at Start).
    auto: bool = False

    def __post_init__(self) -> None:
        assert self.type in TYPES, self.type
        assert self.section in SECTIONS, self.section

    def allowed(self) -> str:
        """Human description of the allowed values, for error messages and help."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.type == "bool":
            return "true or false"
        kind = {"int": "a whole number", "float": "a number"}.get(self.type, "text")
        if self.auto:
            return f"{kind} from {format_number(self.minimum)} to {format_number(self.maximum)}, or 'auto'"
        if self.minimum is not None and self.maximum is not None:
            return f"{kind} from {format_number(self.minimum)} to {format_number(self.maximum)}"
        if self.minimum is not None:
            return f"{kind} of at least {format_number(self.minimum)}"
        return kind


def format_number(number: float) -> str:
    """A number as a person writes it: 64 for 64.0, 0.0001 as is."""
    return str(int(number)) if float(number).is_integer() else str(number)


OPTIMIZERS = ("AdamW", "AdamW8bit", "Adafactor", "Prodigy")
SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "adafactor",
)
# kohya users' Adafactor arguments (a fixed learning rate instead of Adafactor's own).
ADAFACTOR_ARGS = "relative_step=False scale_parameter=False warmup_init=False"
TIMESTEP_SAMPLINGS = ("sigma", "uniform", "sigmoid", "shift", "flux_shift")
# kohya's sample_sampler names. FLUX is a flow-matching model: sd-scripts samples it with
# flow-matching Euler whatever the name, and so do we. A kohya_ss config's other names are read
# as "euler" with a note (engine.preset); our own presets hold "euler".
SAMPLE_SAMPLERS = ("euler",)
KOHYA_SAMPLERS = ("ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver",
                  "dpmsolver++", "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a")

# Defaults follow the 12 GB recipe (FACTS.md) so a key missing from a file means "the
# recommended value"; the shipped presets state every key anyway.
O = Option
OPTIONS_TABLE: tuple[Option, ...] = (
    # --- Model -------------------------------------------------------------------------
    O("description", "str", "", MODEL, "Preset description",
      "Free text describing this preset (what it is for, what differs).", kohya=False),
    O("pretrained_model_name_or_path", "file", "", MODEL, "FLUX.1 model file",
      "The FLUX.1 transformer, e.g. flux1-dev.safetensors (bf16, fp16 or fp8)."),
    O("ae", "file", "", MODEL, "Autoencoder (VAE) file", "FLUX's VAE, ae.safetensors."),
    O("clip_l", "file", "", MODEL, "CLIP-L file", "The CLIP-L text encoder, clip_l.safetensors."),
    O("t5xxl", "file", "", MODEL, "T5-XXL file",
      "The T5-XXL text encoder, e.g. t5xxl_fp16.safetensors."),
    O("clip_l_tokenizer_path", "dir", "", MODEL, "CLIP-L tokenizer folder",
      "A folder holding the CLIP-L tokenizer files. Empty: the standard tokenizer from the "
      "Hugging Face cache (downloaded once when online).", kohya=False),
    O("t5xxl_tokenizer_path", "dir", "", MODEL, "T5-XXL tokenizer folder",
      "A folder holding the T5 tokenizer files. Empty: the standard tokenizer from the "
      "Hugging Face cache (downloaded once when online).", kohya=False),
    O("output_name", "str", "my_flux_lora", MODEL, "Output name",
      "File name of the LoRA, without extension.", metadata="ss_output_name"),
    O("save_precision", "str", "fp16", MODEL, "Save precision",
      "Precision of the saved LoRA file.", choices=("fp16", "bf16", "float")),
    O("LoRA_type", "str", "Flux1", MODEL, "LoRA type",
      "FluxLoRA trains FLUX.1 LoRAs in kohya's layout.", choices=("Flux1",)),
    # --- Folders -----------------------------------------------------------------------
    O("train_data_dir", "dir", "", FOLDERS, "Image folder",
      "The folder that holds the N_name repeat folders (their parent, not an N_name folder)."),
    O("reg_data_dir", "dir", "", FOLDERS, "Regularisation folder",
      "Optional parent of N_class regularisation folders."),
    O("output_dir", "dir", "", FOLDERS, "Output folder", "Where LoRA files and states go."),
    O("logging_dir", "dir", "", FOLDERS, "Logging folder",
      "Where TensorBoard events and the run's text log go; empty: a log folder in the output folder."),
    O("caption_extension", "str", ".txt", FOLDERS, "Caption extension",
      "Extension of the caption file next to each image."),
    # --- Parameters / Basic ------------------------------------------------------------
    O("train_batch_size", "int", 1, BASIC, "Batch size", "Images per step.", minimum=1,
      maximum=64),
    O("epoch", "int", 15, BASIC, "Epochs",
      "Total epochs. When continuing a run this is the new total, not the extra.",
      minimum=1, maximum=100000, metadata="ss_num_epochs"),
    O("max_train_steps", "int", 0, BASIC, "Max train steps",
      "Stop after this many optimizer steps in total; 0 = use epochs.", minimum=0, metadata="ss_max_train_steps"),
    O("save_every_n_epochs", "int", 1, BASIC, "Save every N epochs",
      "Write a LoRA every N epochs; 0 = only at the end.", minimum=0),
    O("save_every_n_steps", "int", 0, BASIC, "Save every N steps",
      "Write a LoRA every N optimizer steps; 0 = off.", minimum=0),
    O("seed", "int", 42, BASIC, "Seed",
      "Random seed; the same seed and preset give the same LoRA.", minimum=0,
      maximum=2**32 - 1, metadata="ss_seed"),
    O("mixed_precision", "str", "bf16", BASIC, "Mixed precision",
      "Compute precision of the training step.", choices=("no", "fp16", "bf16"), metadata="ss_mixed_precision"),
    O("cache_latents", "bool", True, BASIC, "Cache latents",
      "Encode every image with the VAE once before training."),
    O("cache_latents_to_disk", "bool", True, BASIC, "Cache latents to disk",
      "Keep the latent cache on disk so later runs reuse it."),
    O("optimizer", "str", "Adafactor", BASIC, "Optimizer", "The optimizer.",
      choices=OPTIMIZERS),
    O("optimizer_args", "str", ADAFACTOR_ARGS, BASIC, "Optimizer extra arguments",
      "Space-separated key=value pairs passed to the optimizer, e.g. relative_step=False "
      "scale_parameter=False. Adafactor without relative_step=False sets its own step size "
      "(sd-scripts' default): the learning rate is then only the start of its schedule."),
    O("lr_scheduler", "str", "constant", BASIC, "LR scheduler",
      "Learning-rate schedule. 'adafactor' is Adafactor's own (relative_step=True), which "
      "Adafactor with relative_step=True always uses, as in sd-scripts.",
      choices=SCHEDULERS, metadata="ss_lr_scheduler"),
    O("lr_warmup", "float", 0.0, BASIC, "LR warmup (% of steps)",
      "Warmup as a percentage of all steps; used when LR warmup steps is 0.",
      minimum=0, maximum=100),
    O("lr_warmup_steps", "int", 0, BASIC, "LR warmup steps",
      "Warmup steps; overrides the percentage when above 0.", minimum=0),
    O("lr_scheduler_num_cycles", "int", 1, BASIC, "LR cycles",
      "Restarts for cosine_with_restarts.", minimum=1),
    O("lr_scheduler_power", "float", 1.0, BASIC, "LR power",
      "Power of the polynomial schedule.", minimum=0),
    O("learning_rate", "float", 1e-4, BASIC, "Learning rate",
      "Base learning rate (used when Unet learning rate is 0).", minimum=0, maximum=1, metadata="ss_learning_rate"),
    O("unet_lr", "float", 1e-4, BASIC, "Unet learning rate",
      "Learning rate of the transformer LoRA; 0 = use Learning rate.", minimum=0, maximum=1, metadata="ss_unet_lr"),
    O("text_encoder_lr", "float", 1e-4, BASIC, "Text encoder learning rate",
      "Above 0: a LoRA on CLIP-L trains too, at this rate (as sd-scripts does; the file then "
      "holds lora_te1_* layers, which ComfyUI applies with strength_clip). CLIP-L then stays "
      "loaded for the run and T5's outputs are still cached. 0: the transformer only.",
      minimum=0, maximum=1, metadata="ss_text_encoder_lr"),
    O("network_dim", "int", 64, BASIC, "Network rank (dim)", "LoRA rank.", minimum=1,
      maximum=1024, metadata="ss_network_dim"),
    O("network_alpha", "float", 64.0, BASIC, "Network alpha",
      "LoRA alpha; the update is scaled by alpha / rank. 0 means alpha = rank (scale 1), "
      "as in sd-scripts.", minimum=0, maximum=1024, metadata="ss_network_alpha"),
    O("network_weights", "file", "", BASIC, "Start from LoRA",
      "Optional LoRA file to start from (ours, sd-scripts' or diffusers layout)."),
    O("max_resolution", "str", "768,768", BASIC, "Max resolution",
      "Training resolution as width,height (multiples of 64)."),
    O("enable_bucket", "bool", True, BASIC, "Enable buckets",
      "Group images by aspect ratio instead of cropping to a square."),
    O("min_bucket_reso", "int", 256, BASIC, "Minimum bucket resolution",
      "Smallest bucket side in pixels.", minimum=64, maximum=8192),
    O("max_bucket_reso", "int", 2048, BASIC, "Maximum bucket resolution",
      "Largest bucket side in pixels.", minimum=64, maximum=8192),
    O("bucket_no_upscale", "bool", True, BASIC, "Don't upscale bucket resolution",
      "On (kohya_ss's default): an image within the max resolution's area keeps its size and "
      "is only cropped to the bucket steps (min/max bucket resolution do not apply); a larger "
      "one is scaled down to that area. Off: every image is scaled to the bucket of its "
      "aspect ratio, small images upscaled."),
    # --- Parameters / Basic / Flux.1 ---------------------------------------------------
    O("fp8_base", "bool", True, FLUX, "fp8 base",
      "Store the frozen base model in float8 and compute in bf16.", metadata="ss_fp8_base"),
    O("fp8_base_unet", "bool", True, FLUX, "fp8 base (transformer only)",
      "Store only the transformer in float8; text encoders stay wider.", metadata="ss_fp8_base_unet"),
    O("flux1_cache_text_encoder_outputs", "bool", True, FLUX, "Cache text encoder outputs",
      "Encode every caption with CLIP-L and T5 once before training."),
    O("flux1_cache_text_encoder_outputs_to_disk", "bool", True, FLUX,
      "Cache text encoder outputs to disk", "Keep the text cache on disk for later runs."),
    O("guidance_scale", "float", 1.0, FLUX, "Guidance scale",
      "Value fed to the guidance embedder of FLUX.1-dev while training (1.0 recommended).",
      minimum=0, maximum=100, metadata="ss_guidance_scale"),
    O("timestep_sampling", "str", "sigmoid", FLUX, "Timestep sampling",
      "How noise levels are drawn.", choices=TIMESTEP_SAMPLINGS, metadata="ss_timestep_sampling"),
    O("sigmoid_scale", "float", 1.0, FLUX, "Sigmoid scale",
      "Scale of the normal sample inside sigmoid/shift sampling.", minimum=0.01, maximum=100),
    O("discrete_flow_shift", "float", 3.0, FLUX, "Discrete flow shift",
      "Shift used by 'shift' and 'sigma' sampling.", minimum=0.01, maximum=100, metadata="ss_discrete_flow_shift"),
    O("model_prediction_type", "str", "raw", FLUX, "Model prediction type",
      "How the model output is turned into the prediction (raw recommended).",
      choices=("raw", "additive", "sigma_scaled"), metadata="ss_model_prediction_type"),
    O("t5xxl_max_token_length", "int", 512, FLUX, "T5 max tokens",
      "T5 sequence length: 512 for dev, 256 for schnell.", minimum=16, maximum=512),
    O("apply_t5_attn_mask", "bool", False, FLUX, "Apply T5 attention mask",
      "Mask T5 padding tokens, in T5's own attention and in the transformer's.",
      metadata="ss_apply_t5_attn_mask"),
    O("train_blocks", "str", "all", FLUX, "Train blocks",
      "Which transformer blocks get LoRA layers.", choices=("all", "single", "double"), metadata="ss_train_blocks"),
    O("blocks_to_swap", "int", 0, FLUX, "Blocks to swap",
      "Keep part of the transformer in system RAM and stream it to the GPU when needed, counted "
      "as kohya does: N//2 double blocks plus 2 single blocks per remaining unit "
      "(sd-scripts' guide: 12 GB 16, 10 GB 22, 8 GB 28). 'auto': at Start, the fewest blocks whose "
      "estimated peak fits the GPU's free memory (more swapping is slower); the log says what was chosen.",
      minimum=0, maximum=120, auto=True),
    O("mem_eff_save", "bool", True, FLUX, "Memory-efficient save",
      "Stream LoRA files to disk without a second copy in memory."),
    O("highvram", "bool", False, FLUX, "High VRAM",
      "Keep the VAE and text encoders on the GPU all run long; off, they leave it after caching "
      "(or between uses when nothing is cached)."),
    # --- Parameters / Advanced ---------------------------------------------------------
    O("gradient_checkpointing", "bool", True, ADVANCED, "Gradient checkpointing",
      "Recompute activations in the backward pass to save memory."),
    O("gradient_accumulation_steps", "int", 1, ADVANCED, "Gradient accumulation steps",
      "Batches summed into one optimizer step.", minimum=1, maximum=1024),
    O("max_grad_norm", "float", 0.0, ADVANCED, "Max gradient norm",
      "Clip gradients to this norm; 0 = no clipping.", minimum=0),
    O("full_bf16", "bool", False, ADVANCED, "Full bf16 training",
      "Keep the LoRA weights and gradients in bf16 (less memory, less precise)."),
    O("bucket_reso_steps", "int", 64, ADVANCED, "Bucket resolution steps",
      "Bucket sides are multiples of this many pixels.", minimum=16, maximum=512),
    O("save_state", "bool", False, ADVANCED, "Save training state",
      "Save a resumable state with every LoRA save, so a crash (power cut, out of memory) loses at most "
      "the epoch in progress."),
    O("save_last_n_epochs_state", "int", 0, ADVANCED, "Keep last N epoch states",
      "With Save training state on: keep only the newest N per-epoch states (older ones are deleted, "
      "so disk use stays bounded); 0 keeps all. The end-of-run state is always kept.", minimum=0,
      maximum=100000),
    O("save_state_on_train_end", "bool", True, ADVANCED, "Save state at the end",
      "Save a resumable state when training ends or is stopped."),
    O("resume", "dir", "", ADVANCED, "Resume from state",
      "A state folder to continue from; Epochs is then the new total."),
    # --- Parameters / Samples ---------------------------------------------------------
    O("sample_prompts", "str", "", SAMPLES, "Sample prompts",
      "One prompt per line with kohya's options, e.g. 'ohwx man at the beach --w 768 --h 768 --s 20 "
      "--d 42 --g 3.5' (--w/--h size, --s steps, --d seed, --g guidance, --l CFG scale, --n negative "
      "prompt); or the path of a kohya prompt file (.txt, .toml, .json). Without --d prompt i uses "
      "seed + i, so every epoch's image of a prompt starts from the same noise. Defaults: 512x512, "
      "20 steps, guidance 3.5."),
    O("sample_every_n_epochs", "int", 0, SAMPLES, "Sample every N epochs",
      "Sample images at the end of every N-th epoch; 0 = off. When set, Sample every N steps is "
      "ignored (as in sd-scripts).", minimum=0),
    O("sample_every_n_steps", "int", 0, SAMPLES, "Sample every N steps",
      "Sample images every N optimizer steps; 0 = off.", minimum=0),
    O("sample_at_first", "bool", False, SAMPLES, "Sample before training",
      "Also sample once before the first step (what the base model, or the LoRA continued from, draws)."),
    O("sample_sampler", "str", "euler", SAMPLES, "Sampler",
      "FLUX samples with flow-matching Euler (FLUX's shifted schedule). kohya_ss names such as euler_a "
      "or ddim are read as euler, as sd-scripts does for FLUX.", choices=SAMPLE_SAMPLERS),
    # --- Dataset Preparation (ours: kohya_ss does not save these in its config) --------
    O("dataset_instance_prompt", "str", "", DATASET, "Instance prompt",
      "The trigger word, e.g. ohwx.", kohya=False),
    O("dataset_class_prompt", "str", "", DATASET, "Class prompt",
      "What the subject is, e.g. man.", kohya=False),
    O("dataset_images_dir", "dir", "", DATASET, "Training images",
      "The folder with your photos (and any captions).", kohya=False),
    O("dataset_repeats", "int", 10, DATASET, "Repeats",
      "How often each image is seen per epoch.", minimum=1, maximum=10000, kohya=False),
    O("dataset_reg_images_dir", "dir", "", DATASET, "Regularisation images",
      "Optional folder with class images.", kohya=False),
    O("dataset_reg_repeats", "int", 1, DATASET, "Regularisation repeats",
      "How often each regularisation image is seen per epoch.", minimum=1, maximum=10000,
      kohya=False),
    O("dataset_dest_dir", "dir", "", DATASET, "Destination folder",
      "Where the img/reg/log/model layout is built.", kohya=False),
    O("tagger_repo_id", "str", "SmilingWolf/wd-vit-tagger-v3", DATASET, "WD14 model",
      "Hugging Face repo of the WD14 tagger (used when the model folder is empty).",
      kohya=False),
    O("tagger_model_dir", "dir", "", DATASET, "WD14 model folder",
      "A folder with model.onnx and selected_tags.csv (works offline).", kohya=False),
    O("tagger_general_threshold", "float", 0.35, DATASET, "General tag threshold",
      "Minimum score for general tags.", minimum=0, maximum=1, kohya=False),
    O("tagger_character_threshold", "float", 0.85, DATASET, "Character tag threshold",
      "Minimum score for character tags.", minimum=0, maximum=1, kohya=False),
    O("tagger_undesired_tags", "str", "", DATASET, "Undesired tags",
      "Comma-separated tags never written.", kohya=False),
    O("tagger_add_rating", "bool", False, DATASET, "Add rating tag",
      "Put the most likely rating (general, sensitive, ...) into the caption.", kohya=False),
    O("tagger_mode", "str", "skip", DATASET, "Existing captions",
      "What to do with images that already have a caption.",
      choices=("skip", "overwrite", "append"), kohya=False),
)
del O

OPTIONS: dict[str, Option] = {option.key: option for option in OPTIONS_TABLE}
assert len(OPTIONS) == len(OPTIONS_TABLE), "an option key is declared twice"

PRESET_VERSION = 1
# Keys of a preset file that are not options.
META_KEYS = ("preset_version",)


def options_in(section: str) -> list[Option]:
    return [option for option in OPTIONS_TABLE if option.section == section]

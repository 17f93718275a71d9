"""The ss_* and modelspec.* metadata sd-scripts writes into a LoRA file, from a preset."""

from __future__ import annotations

from datetime import datetime, timezone

from engine.schema import OPTIONS_TABLE


def build_metadata(values: dict, *, epoch: int, steps: int, started_at: float,
                   finished_at: float | None = None, architecture: str = "flux-1-dev/lora") -> dict[str, str]:
    """sd-scripts' ss_* and modelspec.* metadata from a preset; every value a string."""
    def stamp(seconds):
        return str(int(seconds)) if seconds is not None else ""

    metadata = {option.metadata: _metadata_text(values[option.key]) for option in OPTIONS_TABLE if option.metadata}
    metadata.update({
        "ss_network_module": "networks.lora_flux",
        "ss_base_model_version": "flux1",
        "ss_optimizer": values["optimizer"] + (f"({values['optimizer_args']})" if values["optimizer_args"] else ""),
        "ss_epoch": str(epoch),
        "ss_steps": str(steps),
        "ss_training_started_at": stamp(started_at),
        "ss_training_finished_at": stamp(finished_at),
        "ss_resolution": f"({values['max_resolution']})",
        "ss_network_train_unet_only": str(values["text_encoder_lr"] == 0),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": "https://github.com/black-forest-labs/flux",
        "modelspec.title": values["output_name"],
        "modelspec.date": datetime.fromtimestamp(finished_at or started_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.resolution": values["max_resolution"].replace(",", "x"),
    })
    return metadata


def _metadata_text(value) -> str:
    """sd-scripts writes str() of its argument: "True", "64", "64.0", "0.0001"."""
    return str(bool(value)) if isinstance(value, bool) else str(value)

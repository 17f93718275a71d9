"""FluxLoRA's engine: presets, dataset preparation, models and training. Imports nothing from gui."""

__version__ = "0.1.0"

"""Test-wide setup: no network, no telemetry. Tiny-model fixtures live in tests/fixtures/."""

import os

# Nothing in the suite may reach the Hugging Face hub or Gradio's telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")

# Fixture modules, one per area (tiny models, tiny tagger, ...); add yours to this list.
pytest_plugins: list[str] = ["tests.fixtures.models", "tests.fixtures.tagger"]

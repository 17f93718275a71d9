"""Test-wide setup: no network, no telemetry, few threads. Tiny-model fixtures live in tests/fixtures/."""

import os

# Nothing in the suite may reach the Hugging Face hub or Gradio's telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Tiny models gain nothing from many threads, and oversubscribed cores make a busy machine's run
# 10x slower. Child processes (CLI runs, torchrun) inherit these.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402  (after the thread variables, so its pools start small)

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

# Fixture modules, one per area (tiny models, tiny tagger, ...); add yours to this list.
# windows_fs enforces Windows' file rules (fsync, replace of open files) in every test.
pytest_plugins: list[str] = ["tests.fixtures.models", "tests.fixtures.browser", "tests.fixtures.tagger",
                              "tests.fixtures.windows_fs"]

import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from engine.preset import save_preset
from engine.train_state import read_train_state
from tests.fixtures.datasets import tiny_training_values

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_data_parallel_run_writes_one_lora_and_one_state(tiny_model_files, tmp_path):
    # 4 images x 2 repeats = 8 batches per epoch, shared by 2 processes: 4 steps per epoch each.
    values = tiny_training_values(tiny_model_files, tmp_path, images=4, epoch=2, save_every_n_epochs=0)
    preset = tmp_path / "p.json"
    save_preset(values, preset)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "engine", "train", str(preset)],
        capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trained to step 8 (epoch 2)") == 1  # only the main process reports
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["tiny-state", "tiny.safetensors"]
    assert "lora_unet_single_blocks_0_linear1.lora_up.weight" in load_file(str(out / "tiny.safetensors"))
    state = read_train_state(out / "tiny-state")
    assert (state.current_step, state.steps_per_epoch) == (8, 4)

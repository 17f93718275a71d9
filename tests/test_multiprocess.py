import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from engine.preset import save_preset
from engine.train_state import read_train_state
from tests.fixtures.datasets import tiny_training_values
from tests.fixtures.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_with_batches_that_do_not_split_evenly_finish_and_write_one_lora(tiny_model_files, tmp_path):
    # 3 images x 1 repeat = 3 batches per epoch for 2 processes: like accelerate's even_batches,
    # the second process repeats the epoch's first batch, so both take 2 optimizer steps per epoch
    # (unevenly split, one process waited forever in the gradient all-reduce).
    values = tiny_training_values(tiny_model_files, tmp_path, images=3, repeats=1, epoch=2, save_every_n_epochs=0)
    preset = tmp_path / "p.json"
    save_preset(values, preset)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "-m", "engine", "train", str(preset)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("2 steps per epoch, 4 steps in all") == 1  # only the main process reports
    assert result.stdout.count("trained to step 4 (epoch 2)") == 1
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["tiny-state", "tiny.safetensors"]
    assert "lora_unet_single_blocks_0_linear1.lora_up.weight" in load_file(str(out / "tiny.safetensors"))
    state = read_train_state(out / "tiny-state")
    assert (state.current_step, state.steps_per_epoch) == (4, 2)

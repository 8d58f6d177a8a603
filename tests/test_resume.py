# Copyright 2026 The trl_plrs Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
Kill-and-resume: a subprocess trains a 3-stage curriculum (4 steps per stage, a checkpoint every step, fraction replay,
LoRA dropout) and is killed with SIGKILL at several points; resuming each time must land on the uninterrupted run's
final adapter.
"""

import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file


WORKER = os.path.join(os.path.dirname(__file__), "scripts", "curriculum_worker.py")

# (flags of one launch, whether it must die by SIGKILL)
INTERRUPTED_RUN = [
    (["--kill_at_step", "2"], True),  # mid-stage 1 (stage 1 spans steps 1-4)
    (["--resume", "--kill_after_transition_to", "1"], True),  # right after the transition to stage 2
    (["--resume", "--kill_while_saving_step", "10"], True),  # mid-stage 3, while checkpoint-10 is being written
    (["--resume"], False),  # to the end
]


def launch(output_dir, mode, flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, WORKER, "--output_dir", str(output_dir), "--adapter_transition", mode, *flags]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def adapter_weights(path):
    return load_file(os.path.join(path, "adapter_model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["merge", "stack"])
def test_killed_and_resumed_run_matches_uninterrupted_run(tmp_path, mode):
    uninterrupted = launch(tmp_path / "uninterrupted", mode, [])
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    for flags, killed in INTERRUPTED_RUN:
        result = launch(tmp_path / "interrupted", mode, flags)
        expected = -signal.SIGKILL if killed else 0
        assert result.returncode == expected, (flags, result.stderr[-3000:])

    # The torn checkpoint-10 was skipped, not trusted (the run resumed from checkpoint-9 and wrote it anew).
    assert "Skipping the incomplete checkpoint" in result.stderr
    assert os.path.isfile(tmp_path / "interrupted" / "checkpoint-10" / "trainer_state.json")

    for name in ["stage-0", "stage-1", "stage-2", "."]:
        expected_weights = adapter_weights(tmp_path / "uninterrupted" / name)
        resumed_weights = adapter_weights(tmp_path / "interrupted" / name)
        assert expected_weights.keys() == resumed_weights.keys()
        for key, value in expected_weights.items():
            torch.testing.assert_close(resumed_weights[key], value, atol=1e-5, rtol=0, msg=f"{name}: {key}")

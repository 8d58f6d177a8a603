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

import os

import pytest

from trl_plrs.checkpointing import (
    CURRICULUM_STATE_NAME,
    TRAINER_STATE_NAME,
    atomic_path,
    is_complete_checkpoint,
    last_complete_checkpoint,
    read_json,
    write_json_atomic,
)


def test_write_json_atomic_replaces_the_file_whole(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(str(path), {"stage": 1})
    write_json_atomic(str(path), {"stage": 2})
    assert read_json(str(path)) == {"stage": 2}
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary file left behind


def test_a_failed_write_leaves_the_previous_file_untouched(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(str(path), {"stage": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(str(path)) as tmp:
            with open(tmp, "w") as file:
                file.write('{"stage": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert read_json(str(path)) == {"stage": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_path_replaces_a_folder(tmp_path):
    target = tmp_path / "stage-0"
    for content in ("old", "new"):
        with atomic_path(str(target)) as tmp:
            os.makedirs(tmp)
            with open(os.path.join(tmp, "adapter.bin"), "w") as file:
                file.write(content)
    assert (target / "adapter.bin").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["stage-0"]


def make_checkpoint(output_dir, step, complete=True):
    path = output_dir / f"checkpoint-{step}"
    path.mkdir()
    (path / CURRICULUM_STATE_NAME).write_text("{}")
    (path / "adapter_model.safetensors").write_text("")
    if complete:
        (path / TRAINER_STATE_NAME).write_text("{}")
    return str(path)


def test_last_complete_checkpoint_skips_torn_checkpoints(tmp_path):
    make_checkpoint(tmp_path, 2)
    nine = make_checkpoint(tmp_path, 9)
    make_checkpoint(tmp_path, 10, complete=False)
    (tmp_path / "checkpoint-11").mkdir()  # killed before anything was written
    assert last_complete_checkpoint(str(tmp_path)) == nine
    assert not is_complete_checkpoint(str(tmp_path / "checkpoint-10"))


def test_last_complete_checkpoint_orders_by_step_not_name(tmp_path):
    make_checkpoint(tmp_path, 9)
    ten = make_checkpoint(tmp_path, 10)
    assert last_complete_checkpoint(str(tmp_path)) == ten


def test_no_checkpoint(tmp_path):
    assert last_complete_checkpoint(str(tmp_path)) is None
    assert last_complete_checkpoint(str(tmp_path / "missing")) is None

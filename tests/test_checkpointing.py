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
    complete_checkpoints,
    is_complete_checkpoint,
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


def test_complete_checkpoints_skip_torn_checkpoints(tmp_path):
    two = make_checkpoint(tmp_path, 2)
    nine = make_checkpoint(tmp_path, 9)
    make_checkpoint(tmp_path, 10, complete=False)
    (tmp_path / "checkpoint-11").mkdir()  # killed before anything was written
    assert complete_checkpoints(str(tmp_path)) == [two, nine]
    assert not is_complete_checkpoint(str(tmp_path / "checkpoint-10"))


def test_complete_checkpoints_order_by_step_not_name(tmp_path):
    make_checkpoint(tmp_path, 9)
    ten = make_checkpoint(tmp_path, 10)
    assert complete_checkpoints(str(tmp_path))[-1] == ten


def test_no_checkpoint(tmp_path):
    assert complete_checkpoints(str(tmp_path)) == []
    assert complete_checkpoints(str(tmp_path / "missing")) == []


def test_install_files_never_pairs_a_new_file_with_an_old_entry_point(tmp_path, monkeypatch):
    from trl_plrs.checkpointing import install_files

    target = tmp_path / "out"
    target.mkdir()
    (target / "adapter_config.json").write_text("old config")
    (target / "adapter_model.safetensors").write_text("old weights")
    staging = target / ".final-adapter-1.tmp"
    staging.mkdir()
    (staging / "adapter_config.json").write_text("new config")
    (staging / "adapter_model.safetensors").write_text("new weights")
    (staging / "tokenizer.json").write_text("new tokenizer")

    real_replace, moves = os.replace, []

    def crash_after_one_move(source, destination):
        if moves:
            raise OSError("killed")
        moves.append(destination)
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", crash_after_one_move)
    with pytest.raises(OSError):
        install_files(str(staging), str(target), entry_point="adapter_config.json")
    # Interrupted: the old config is gone (so nothing loads as a mix), and no new config came before the rest.
    assert not (target / "adapter_config.json").exists()
    monkeypatch.setattr(os, "replace", real_replace)
    install_files(str(staging), str(target), entry_point="adapter_config.json")
    assert (target / "adapter_config.json").read_text() == "new config"
    assert (target / "adapter_model.safetensors").read_text() == "new weights"
    assert (target / "tokenizer.json").read_text() == "new tokenizer"


def test_remove_staging_leftovers_keeps_everything_else(tmp_path):
    from trl_plrs.checkpointing import remove_staging_leftovers

    (tmp_path / ".stage-0.abc.tmp").mkdir()
    (tmp_path / ".stage-0.abc.tmp.old").mkdir()
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / ".trainer_state.json.x.tmp").write_text("")
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / ".hidden_config").write_text("mine")
    removed = remove_staging_leftovers(str(tmp_path))
    assert len(removed) == 3
    assert sorted(os.listdir(tmp_path)) == [".hidden_config", "checkpoint-2"]
    assert os.listdir(tmp_path / "checkpoint-2") == ["trainer_state.json"]

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
The callback contract: a curriculum is one training run for every callback and tracker (TensorBoard and MLflow for
real, read back from their files), stage events reach `CurriculumCallback`s, and the stage mechanics cannot be removed
silently.
"""

import glob
import os

import pytest
from transformers import TrainerCallback

from trl_plrs import CurriculumCallback, CurriculumSFTTrainer, PLRSCallback
from trl_plrs.testing import build_tiny_model

from .conftest import make_leveled_dataset
from .test_plrs_trainer import lora_config, make_args


STAGES = 3
STEPS_PER_STAGE = 3


class EventRecorder(CurriculumCallback):
    """Records every event in order, with the step it came at."""

    def __init__(self):
        self.events = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.append(("train_begin", state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append(("train_end", state.global_step))

    def on_stage_begin(self, args, state, control, stage, **kwargs):
        self.events.append(("stage_begin", stage.number))

    def on_stage_end(self, args, state, control, stage, metrics=None, **kwargs):
        self.events.append(("stage_end", stage.number))

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.events.append(("log", dict(logs)))


class PlainRecorder(TrainerCallback):
    """A third-party callback that knows nothing of stages (as a tracker integration)."""

    def __init__(self):
        self.begins, self.ends = 0, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.begins += 1

    def on_train_end(self, args, state, control, **kwargs):
        self.ends += 1


def build_trainer(tmp_path, tokenizer, callbacks=(), **kwargs):
    return CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, **{"max_steps": STEPS_PER_STAGE, **kwargs}),
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=list(callbacks),
    )


def test_callbacks_see_one_training_run(tmp_path, tokenizer):
    recorder, plain = EventRecorder(), PlainRecorder()
    trainer = build_trainer(tmp_path, tokenizer, callbacks=[recorder, plain])
    trainer.train()

    names = [name for name, _ in recorder.events]
    assert names.count("train_begin") == names.count("train_end") == 1
    assert plain.begins == plain.ends == 1
    assert names[0] == "stage_begin" and names[1] == "train_begin"
    assert [value for name, value in recorder.events if name == "stage_begin"] == list(range(1, STAGES + 1))
    assert [value for name, value in recorder.events if name == "stage_end"] == list(range(1, STAGES + 1))
    # `on_train_end` comes last, after the last stage and after the curriculum's own final metrics.
    assert names[-1] == "train_end" and recorder.events[-1][1] == STAGES * STEPS_PER_STAGE
    final_log = recorder.events[-2]
    assert final_log[0] == "log"
    assert {"train_loss", "train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos"} <= set(
        final_log[1]
    )
    assert trainer.state.log_history[-1]["train_loss"] == pytest.approx(final_log[1]["train_loss"])


def test_epoch_counts_on_across_stages(tmp_path, tokenizer):
    # 8 rows per level, batch 4: stage 1 trains 2 steps per epoch over 8 rows; later stages replay earlier levels.
    recorder = EventRecorder()
    trainer = build_trainer(tmp_path, tokenizer, callbacks=[recorder])
    trainer.train()

    step_logs = [logs for name, logs in recorder.events if name == "log" and "loss" in logs]
    assert len(step_logs) == STAGES * STEPS_PER_STAGE
    epochs = [logs["epoch"] for logs in step_logs]
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)
    # `stage_epoch` restarts at every stage; `epoch` = epochs of the finished stages + `stage_epoch`.
    by_stage = {}
    for logs in step_logs:
        by_stage.setdefault(logs["stage"], []).append(logs)
    finished_epochs = 0.0
    for stage in range(1, STAGES + 1):
        logs = by_stage[stage]
        assert logs[0]["stage_epoch"] < 1.0
        for entry in logs:
            assert entry["epoch"] == pytest.approx(finished_epochs + entry["stage_epoch"])
        finished_epochs += logs[-1]["stage_epoch"]


def test_tensorboard_writes_one_run_with_every_stage(tmp_path, tokenizer, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging_dir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logging_dir))
    trainer = build_trainer(tmp_path, tokenizer, report_to="tensorboard")
    trainer.train()

    event_files = glob.glob(os.path.join(logging_dir, "**", "events.out.tfevents.*"), recursive=True)
    assert len(event_files) == 1, event_files  # one writer for the whole curriculum, never closed in between
    events = EventAccumulator(event_files[0])
    events.Reload()
    loss_steps = [event.step for event in events.Scalars("train/loss")]
    assert loss_steps == list(range(1, STAGES * STEPS_PER_STAGE + 1))
    assert [event.value for event in events.Scalars("train/stage")][-1] == STAGES
    assert {event.value for event in events.Scalars("train/stage")} == set(range(1, STAGES + 1))
    # The curriculum's final metrics reach the writer before it closes.
    assert events.Scalars("train/train_loss")[-1].step == STAGES * STEPS_PER_STAGE


def test_mlflow_keeps_one_run_for_the_whole_curriculum(tmp_path, tokenizer, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "plrs")
    monkeypatch.setenv("MLFLOW_ARTIFACT_LOCATION", str(tmp_path / "artifacts"))
    trainer = build_trainer(tmp_path, tokenizer, report_to="mlflow")
    trainer.train()

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("plrs")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"  # ended once, at the curriculum's end
    loss_steps = sorted(metric.step for metric in client.get_metric_history(run.info.run_id, "loss"))
    assert loss_steps == list(range(1, STAGES * STEPS_PER_STAGE + 1))
    stages = {metric.value for metric in client.get_metric_history(run.info.run_id, "stage")}
    assert stages == set(range(1, STAGES + 1))
    assert "train_loss" in run.data.metrics
    assert mlflow.active_run() is None


def test_removing_the_plrs_callback_fails_before_training(tmp_path, tokenizer):
    trainer = build_trainer(tmp_path, tokenizer)
    assert trainer.pop_callback(PLRSCallback) is trainer.plrs_callback
    with pytest.raises(ValueError, match="`PLRSCallback` was removed"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_plrs_callback_must_come_before_other_stage_callbacks(tmp_path, tokenizer):
    trainer = build_trainer(tmp_path, tokenizer)
    trainer.callback_handler.callbacks.insert(0, EventRecorder())
    with pytest.raises(ValueError, match="must be the first stage callback"):
        trainer.train()


def test_plain_callback_with_stage_events_is_refused(tmp_path, tokenizer):
    class DuckTyped(TrainerCallback):
        def on_stage_end(self, args, state, control, stage, **kwargs):
            pass

    trainer = build_trainer(tmp_path, tokenizer, callbacks=[DuckTyped()])
    with pytest.raises(ValueError, match="Subclass `trl_plrs.CurriculumCallback`"):
        trainer.train()


def test_curriculum_callback_events_default_to_no_ops(tmp_path, tokenizer):
    callback = CurriculumCallback()
    trainer = build_trainer(tmp_path, tokenizer, callbacks=[callback], max_steps=1)
    trainer.train()  # a subclass that overrides nothing is a valid callback
    assert trainer.state.global_step == STAGES

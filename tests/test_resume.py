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
import time

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

    for name in ["stage-1", "stage-2", "stage-3", "."]:
        expected_weights = adapter_weights(tmp_path / "uninterrupted" / name)
        resumed_weights = adapter_weights(tmp_path / "interrupted" / name)
        assert expected_weights.keys() == resumed_weights.keys()
        for key, value in expected_weights.items():
            torch.testing.assert_close(resumed_weights[key], value, atol=1e-5, rtol=0, msg=f"{name}: {key}")


# --------------------------------------------------------------------------------------------------------------------
# One run per `output_dir`: a checkpoint is resumed only by the run that wrote it


def _trainer(output_dir, tokenizer, callbacks=(), lora_kwargs=None, **kwargs):
    from trl_plrs import CurriculumSFTTrainer
    from trl_plrs.testing import build_tiny_model

    from .conftest import make_leveled_dataset
    from .test_plrs_trainer import lora_config, make_args

    return CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(output_dir, save_strategy="steps", save_steps=1, **kwargs),
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(**{"lora_dropout": 0.0, **(lora_kwargs or {})}),
        callbacks=list(callbacks),
    )


class StopAtStep:
    """A callback that asks training to stop at `step` (as a kill would leave the checkpoints up to it)."""

    def __new__(cls, step):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    control.should_training_stop = True

        return _Stop()


@pytest.mark.parametrize("stop_at", [2, 6])  # mid-stage 1, mid-stage 2 (3 stages of 4 steps)
def test_per_stage_figures_add_up_after_a_resume(tmp_path, tokenizer, stop_at):
    """A resumed stage reports its loss over all its steps (the run before the stop included), as the uninterrupted
    run does, and so does the curriculum's `train_loss`; its `train_runtime` counts the time it trained before the
    stop too, so that `samples / train_runtime` is its speed."""
    from transformers import TrainerCallback

    class SlowStep(TrainerCallback):  # the step before the stop takes 1.5 s more
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == stop_at - 1:
                time.sleep(1.5)

    uninterrupted = _trainer(tmp_path / "uninterrupted", tokenizer)
    expected = uninterrupted.train()
    _trainer(tmp_path / "interrupted", tokenizer, callbacks=[SlowStep(), StopAtStep(stop_at)]).train()
    resumed = _trainer(tmp_path / "interrupted", tokenizer)
    output = resumed.train(resume_from_checkpoint=True)
    for mine, theirs in zip(resumed.stage_summaries, uninterrupted.stage_summaries, strict=True):
        assert (mine.stage, mine.steps, mine.samples) == (theirs.stage, theirs.steps, theirs.samples)
        assert mine.train_loss == pytest.approx(theirs.train_loss, rel=1e-5), mine.stage
    assert output.training_loss == pytest.approx(expected.training_loss, rel=1e-5)
    stopped_stage = resumed.stage_summaries[(stop_at - 1) // 4]  # 3 stages of 4 steps
    assert stopped_stage.train_runtime >= 1.5


@pytest.mark.parametrize(
    "changed, field",
    [
        ({"learning_rate": 1e-3}, "schedule.learning_rate"),
        ({"lora_kwargs": {"target_modules": ["q_proj", "v_proj"]}}, "lora.target_modules"),
        ({"lora_kwargs": {"lora_dropout": 0.1}}, "lora.lora_dropout"),
        ({"seed": 11}, "seed"),
    ],
)
def test_resume_against_a_different_run_names_the_fields(tmp_path, tokenizer, changed, field):
    _trainer(tmp_path, tokenizer, callbacks=[StopAtStep(4)]).train()
    other = _trainer(tmp_path, tokenizer, **changed)
    with pytest.raises(ValueError, match=rf"belongs to another run.*'{field}'"):
        other.train(resume_from_checkpoint=os.path.join(tmp_path, "checkpoint-4"))
    assert other.state.global_step == 0  # refused before any weight was loaded or step trained
    with pytest.raises(ValueError, match=rf"every checkpoint in `output_dir`.*belongs to.*'{field}'"):
        other.train(resume_from_checkpoint=True)


def test_a_new_run_in_an_old_runs_folder_resumes_itself(tmp_path, tokenizer, caplog):
    """The old run leaves checkpoints 1-9; the new one (another learning rate) stops after 2, then resumes."""
    _trainer(tmp_path / "shared", tokenizer).train()
    _trainer(tmp_path / "shared", tokenizer, callbacks=[StopAtStep(2)], learning_rate=1e-3).train()
    resumed = _trainer(tmp_path / "shared", tokenizer, learning_rate=1e-3)
    with caplog.at_level("WARNING"):
        resumed.train(resume_from_checkpoint=True)
    assert "Skipped the checkpoints" in caplog.text and "checkpoint-9" in caplog.text
    assert "Resuming from" in caplog.text and "checkpoint-2" in caplog.text

    _trainer(tmp_path / "alone", tokenizer, learning_rate=1e-3).train()
    alone, shared = (adapter_weights(tmp_path / name) for name in ("alone", "shared"))
    assert alone.keys() == shared.keys()
    for key, value in alone.items():
        torch.testing.assert_close(shared[key], value, atol=1e-6, rtol=0, msg=key)


def test_a_new_run_sets_an_old_runs_outputs_aside(tmp_path, tokenizer, caplog):
    """A different run in a used folder moves the other run's stage adapters and evaluations aside, with a warning,
    so that what the folder lists is its own; a rerun of the same configuration moves nothing."""
    folder = tmp_path / "shared"
    _trainer(folder, tokenizer).train()  # 3 stages
    with caplog.at_level("WARNING"):
        _trainer(folder, tokenizer, lora_ranks=[4], curriculum_stages=["1,2,3"]).train()
    assert "held the outputs of another run" in caplog.text and "previous-run-1" in caplog.text
    assert sorted(name for name in os.listdir(folder) if name.startswith("stage-")) == ["stage-1"]
    old = folder / "previous-run-1"
    assert sorted(name for name in os.listdir(old) if name.startswith("stage-")) == ["stage-1", "stage-2", "stage-3"]
    assert '"r": 28' in (old / "adapter_config.json").read_text()  # the old combined adapter, kept whole
    assert '"r": 4' in (folder / "adapter_config.json").read_text()
    caplog.clear()
    with caplog.at_level("WARNING"):
        _trainer(folder, tokenizer, lora_ranks=[4], curriculum_stages=["1,2,3"]).train()
    assert "another run" not in caplog.text and not (folder / "previous-run-2").exists()


def test_staging_leftovers_are_removed_at_the_next_start(tmp_path, tokenizer):
    leftovers = [
        tmp_path / ".adapter-abc123.tmp",
        tmp_path / ".stage-1.x9y8.tmp",
        tmp_path / ".final-adapter-q1w2.tmp",
        tmp_path / "checkpoint-3" / ".curriculum_state.json.k3j4.tmp",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.mkdir() if path.name.startswith((".adapter", ".stage", ".final")) else path.write_text("{}"))
    _trainer(tmp_path, tokenizer, max_steps=1).train()
    assert not any(path.exists() for path in leftovers)
    assert not [name for name in os.listdir(tmp_path) if name.endswith((".tmp", ".tmp.old"))]


class DieAtStageEnd:
    """A callback that raises when stage `stage` ends (after its last checkpoint and its adapter are written)."""

    def __new__(cls, stage_index):
        from trl_plrs import CurriculumCallback

        class _Die(CurriculumCallback):
            def on_stage_end(self, args, state, control, stage, **kwargs):
                if stage.index == stage_index:
                    raise RuntimeError("killed at the stage's end")

        return _Die()


@pytest.mark.parametrize("mode", ["merge", "stack"])
def test_resume_at_the_end_of_a_stage_that_ends_mid_epoch(tmp_path, tokenizer, mode):
    # 8 rows of level 1 at batch 3: 3 steps per epoch, so a 4-step stage ends one step into its second epoch.
    settings = dict(max_steps=4, per_device_train_batch_size=3, adapter_transition=mode)
    _trainer(tmp_path / "uninterrupted", tokenizer, **settings).train()
    with pytest.raises(RuntimeError, match="killed at the stage's end"):
        _trainer(tmp_path / "interrupted", tokenizer, callbacks=[DieAtStageEnd(0)], **settings).train()
    # The stage-end checkpoint holds no optimizer or scheduler state (the next stage discards them), a mid-stage one
    # does; the resume below from the stage-end one is exact all the same.
    assert not os.path.exists(tmp_path / "interrupted" / "checkpoint-4" / "optimizer.pt")
    assert not os.path.exists(tmp_path / "interrupted" / "checkpoint-4" / "scheduler.pt")
    assert os.path.isfile(tmp_path / "interrupted" / "checkpoint-4" / "rng_state.pth")
    assert os.path.isfile(tmp_path / "interrupted" / "checkpoint-3" / "optimizer.pt")
    resumed = _trainer(tmp_path / "interrupted", tokenizer, **settings)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 12  # no extra step after the resumed stage's last one
    expected, actual = (adapter_weights(tmp_path / name) for name in ("uninterrupted", "interrupted"))
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, atol=1e-6, rtol=0, msg=key)


@pytest.mark.parametrize(
    "mode, restore_callback_states, killed_stage",
    [("merge", False, 0), ("stack", False, 0), ("merge", True, 0), ("merge", True, 1), ("stack", True, 1)],
)
def test_resume_at_the_end_of_an_early_stopped_stage(tmp_path, tokenizer, mode, restore_callback_states, killed_stage):
    """
    With `restore_callback_states_from_checkpoint=True` the Trainer replaces the early-stopping callback by a new
    instance restored from the checkpoint: the stage's early stop must still end only that stage (it once read as a
    user's stop request, and the curriculum silently ended after the resumed stage).
    """
    from .conftest import make_leveled_dataset

    # `greater_is_better=True` on the loss: every evaluation after the first is "worse", so with patience 1 each stage
    # stops at its second step of 4, loading its best checkpoint (its first step).
    settings = dict(
        adapter_transition=mode, max_steps=4, eval_strategy="steps", eval_steps=1, load_best_model_at_end=True,
        early_stopping_patience=1, metric_for_best_model="loss", greater_is_better=True,
        restore_callback_states_from_checkpoint=restore_callback_states,
    )  # fmt: skip

    def build(output_dir, callbacks=()):
        from trl_plrs import CurriculumSFTTrainer
        from trl_plrs.testing import build_tiny_model

        from .test_plrs_trainer import lora_config, make_args

        return CurriculumSFTTrainer(
            build_tiny_model(tokenizer),
            args=make_args(output_dir, save_strategy="steps", save_steps=1, **settings),
            train_dataset=make_leveled_dataset(),
            eval_dataset=make_leveled_dataset(rows_per_level=2),
            processing_class=tokenizer,
            peft_config=lora_config(lora_dropout=0.0),
            callbacks=list(callbacks),
        )

    uninterrupted = build(tmp_path / "uninterrupted")
    uninterrupted.train()
    assert [summary.steps for summary in uninterrupted.stage_summaries] == [2, 2, 2]  # every stage stopped early
    with pytest.raises(RuntimeError, match="killed at the stage's end"):
        build(tmp_path / "interrupted", callbacks=[DieAtStageEnd(killed_stage)]).train()
    resumed = build(tmp_path / "interrupted")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == uninterrupted.state.global_step == 6  # no stage trained again, none skipped
    assert [summary.stage for summary in resumed.stage_summaries] == [1, 2, 3]
    expected, actual = (adapter_weights(tmp_path / name) for name in ("uninterrupted", "interrupted"))
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, atol=1e-6, rtol=0, msg=key)


@pytest.mark.slow
def test_seeded_random_kills_resume_exactly(tmp_path):
    """The CI subset of `tests/stress/kill_resume.py` (30 trials, output committed beside it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "kill_resume", os.path.join(os.path.dirname(__file__), "stress", "kill_resume.py")
    )
    kill_resume = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kill_resume)
    summary = kill_resume.main(["--trials", "10", "--seed", "1", "--output", str(tmp_path / "results.md")])
    assert summary["killed"] >= 8
    assert summary["exact"] == len(summary["trials"]), [trial for trial in summary["trials"] if not trial["exact"]]


# --------------------------------------------------------------------------------------------------------------------
# The typed curriculum state, on its own (`trl_plrs.resume`)


def _summary(stage, **kwargs):
    from trl_plrs.resume import StageSummary

    fields = dict(stage=stage, levels=[stage], rows=8, lora_rank=16 // stage, lora_alpha=32.0 / stage)
    fields.update(trainable_params=100, steps=4, samples=16, train_loss=0.5, train_runtime=1.25)
    return StageSummary(**{**fields, **kwargs})


def test_curriculum_state_and_summaries_round_trip_through_a_checkpoint(tmp_path):
    from trl_plrs.resume import CurriculumState, read_checkpoint_state, write_checkpoint_state

    state = CurriculumState(stage=2, stage_start_step=8, adapter_stage=2, frozen_adapters=["frozen_stages"])
    state.trainable_params, state.epochs_before_stage = 1234, 2.0
    summaries = [_summary(1, merge_rounding_loss=0.0), _summary(2, eval_per_level={"loss": {"1": 0.5, "2": None}})]
    fingerprint = {"seed": 7, "stages": [[1], [2], [3]]}
    write_checkpoint_state(str(tmp_path), fingerprint, state, [0, 3, 5], summaries)

    read_state, read_summaries = read_checkpoint_state(str(tmp_path), fingerprint, lambda index: [0, 3, 5])
    assert read_state == state and read_summaries == summaries
    # The optional fields are written only when set, as the list of dicts was.
    assert "eval_per_level" not in summaries[0].to_dict() and "merge_rounding_loss" not in summaries[1].to_dict()

    with pytest.raises(ValueError, match=r"fields \['seed'\] differ"):
        read_checkpoint_state(str(tmp_path), {**fingerprint, "seed": 8}, lambda index: [0, 3, 5])
    with pytest.raises(ValueError, match="the rows of stage 3"):
        read_checkpoint_state(str(tmp_path), fingerprint, lambda index: [0, 3, 6])
    with pytest.raises(TypeError):
        _summary(1, misspelled_key=1)  # a misspelled field fails loudly, where a dict key failed silently


def test_curriculum_train_metrics_weigh_each_stage_by_its_steps():
    from trl_plrs.resume import curriculum_train_metrics

    summaries = [_summary(1, steps=2, train_loss=1.0), _summary(2, steps=6, train_loss=0.5, samples=24)]
    metrics = curriculum_train_metrics(summaries, first_stage_index=1, start_time=time.time() - 2.0)
    assert metrics["train_loss"] == pytest.approx((2 * 1.0 + 6 * 0.5) / 8)
    # A call resumed in stage 2 counts stage 2's samples only: 24 in about 2 s.
    assert metrics["train_samples_per_second"] == pytest.approx(24 / metrics["train_runtime"], rel=0.01)
    assert metrics["train_samples_per_second"] == pytest.approx(12, rel=0.1)


@pytest.mark.parametrize(
    "steps_in_stage, closed, expected",
    [(0, False, (0, 0)), (7, False, (1, 6)), (12, False, (3, 0)), (5, True, (3, 0))],
)
def test_resumed_stage_position(steps_in_stage, closed, expected):
    from trl_plrs.resume import resumed_stage_position

    # 12 steps in 3 epochs of 4, gradient accumulation 2: step 7 is epoch 1, 3 steps (6 batches) into it.
    assert resumed_stage_position(steps_in_stage, closed, 12, 4, 3, True, 2) == expected
    assert resumed_stage_position(7, False, 12, 4, 3, False, 2) == (1, 0)  # `ignore_data_skip`


@pytest.mark.parametrize("value", ["True", "true", " TRUE "])
def test_resume_from_checkpoint_true_from_a_command_line(tmp_path, value):
    """`--resume_from_checkpoint True` is a string: it means this run's newest checkpoint, not a path named True."""
    from trl_plrs.resume import CurriculumState, checkpoint_to_resume, write_checkpoint_state

    fingerprint = {"seed": 7}
    for step in (2, 4):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        write_checkpoint_state(str(checkpoint), fingerprint, CurriculumState(), [0], [])
        (checkpoint / "trainer_state.json").write_text("{}")
    assert checkpoint_to_resume(value, str(tmp_path), fingerprint) == str(tmp_path / "checkpoint-4")
    assert checkpoint_to_resume("false", str(tmp_path), fingerprint) is None


def test_a_moved_run_resumes_from_its_new_place(tmp_path, tokenizer):
    """A run and its local base moved elsewhere (as a user moves a demo folder) resume from their new place: the
    fingerprint names a local base by its folder's name, not its path."""
    import shutil

    from transformers import AutoModelForCausalLM

    from trl_plrs import CurriculumSFTTrainer
    from trl_plrs.testing import save_tiny_model

    from .conftest import make_leveled_dataset
    from .test_plrs_trainer import lora_config, make_args

    def build(root, callbacks=()):
        return CurriculumSFTTrainer(
            AutoModelForCausalLM.from_pretrained(str(root / "base_model")),
            args=make_args(root / "run", save_strategy="steps", save_steps=1),
            train_dataset=make_leveled_dataset(),
            processing_class=tokenizer,
            peft_config=lora_config(lora_dropout=0.0),
            callbacks=list(callbacks),
        )

    save_tiny_model(str(tmp_path / "first" / "base_model"))
    build(tmp_path / "first", [StopAtStep(4)]).train()
    shutil.move(str(tmp_path / "first"), str(tmp_path / "moved"))
    resumed = build(tmp_path / "moved")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 9 and [summary.stage for summary in resumed.stage_summaries] == [1, 2, 3]

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

import csv
import json
import os
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import EarlyStoppingCallback

import trl_plrs.math.evaluation
from trl_plrs import CurriculumCallback, CurriculumSFTTrainer, PLRSConfig
from trl_plrs.adapters import DEFAULT_ADAPTER
from trl_plrs.curriculum import Stage
from trl_plrs.data import split_train_validation
from trl_plrs.forgetting import (
    FORGETTING_HEATMAP_PNG,
    FORGETTING_MATRIX_CSV,
    FORGETTING_MATRIX_JSON,
    ForgettingMatrix,
    average_final,
    backward_transfer,
    forgetting_per_level,
    forward_transfer,
    load_forgetting_matrix,
    save_forgetting_matrix,
    transfer_summary,
)
from trl_plrs.math.data import make_synthetic_math, math_corpus, to_prompt_completion
from trl_plrs.stage_evaluation import StageEvaluationCallback
from trl_plrs.testing import build_tiny_model, build_tokenizer

from .conftest import make_leveled_dataset


# --------------------------------------------------------------------------------------------------------------------
# Derived metrics, hand-computed

# After stage 1 (trains level 1), stage 2 (level 2), stage 3 (level 3).
ACCURACY = [[0.8, 0.1, 0.0], [0.6, 0.9, 0.2], [0.5, 0.7, 0.9]]
ACCURACY_BEFORE = [0.1, 0.0, 0.0]
LOSS = [[1.0, 3.0, 4.0], [1.5, 1.2, 3.5], [2.0, 1.4, 1.1]]
LOSS_BEFORE = [3.0, 3.2, 4.2]


def test_average_final():
    assert average_final(ACCURACY) == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert average_final([]) is None


def test_backward_transfer_accuracy_and_loss():
    # mean(0.5 - 0.8, 0.7 - 0.9)
    assert backward_transfer(ACCURACY, [0, 1, 2]) == pytest.approx(-0.25)
    # negated for a loss: -mean(2.0 - 1.0, 1.4 - 1.2)
    assert backward_transfer(LOSS, [0, 1, 2], higher_is_better=False) == pytest.approx(-0.6)
    # after the first stage nothing was trained before the last row
    assert backward_transfer(ACCURACY[:1], [0, 1, 2]) is None


def test_forgetting_per_level():
    # level 1: max(0.8, 0.6) - 0.5; level 2: max(0.1, 0.9) - 0.7; level 3 is trained at the last stage
    assert forgetting_per_level(ACCURACY, [0, 1, 2]) == pytest.approx([0.3, 0.2, None])
    # loss: 2.0 - min(1.0, 1.5); 1.4 - min(3.0, 1.2)
    assert forgetting_per_level(LOSS, [0, 1, 2], higher_is_better=False) == pytest.approx([1.0, 0.2, None])


def test_forward_transfer():
    # level 2: R[0, 2] - before = 0.1 - 0.0; level 3: R[1, 3] - before = 0.2 - 0.0
    assert forward_transfer(ACCURACY, [0, 1, 2], ACCURACY_BEFORE) == pytest.approx(0.15)
    # loss: -(3.0 - 3.2), -(3.5 - 4.2)
    assert forward_transfer(LOSS, [0, 1, 2], LOSS_BEFORE, higher_is_better=False) == pytest.approx(0.45)
    assert forward_transfer(ACCURACY, [0, 1, 2], None) is None


def test_stages_with_several_levels_and_untrained_levels():
    # stage 1 (row 0) trains levels 1 and 2, stage 2 (row 1) trains level 3; level 4 is evaluated but never trained
    matrix = [[0.6, 0.4, 0.1, 0.0], [0.5, 0.4, 0.8, 0.1]]
    trained_at = [0, 0, 1, None]
    assert backward_transfer(matrix, trained_at) == pytest.approx(((0.5 - 0.6) + (0.4 - 0.4)) / 2)
    assert forgetting_per_level(matrix, trained_at) == pytest.approx([0.1, 0.0, None, None])
    assert forward_transfer(matrix, trained_at, [0.0, 0.0, 0.05, 0.0]) == pytest.approx(0.1 - 0.05)
    summary = transfer_summary(matrix, trained_at)
    assert summary["average_final"] == pytest.approx(0.45)


def make_matrix() -> ForgettingMatrix:
    return ForgettingMatrix(
        levels=[1, 2, 3],
        stage_levels=[[1], [2], [3]],
        before={"loss": LOSS_BEFORE, "exact_match": ACCURACY_BEFORE},
        after_stage={k + 1: {"loss": LOSS[k], "exact_match": ACCURACY[k]} for k in range(3)},
    )


def test_forgetting_matrix_summary_roundtrip_and_files(tmp_path):
    matrix = make_matrix()
    assert matrix.trained_at == [1, 2, 3]  # stages are numbered from 1, like the levels
    summary = matrix.summary()
    assert summary["exact_match"]["backward_transfer"] == pytest.approx(-0.25)
    assert summary["loss"]["forward_transfer"] == pytest.approx(0.45)

    paths = save_forgetting_matrix(matrix, str(tmp_path))
    assert set(paths) == {"json", "csv", "png"}
    assert ForgettingMatrix.from_dict(json.loads(json.dumps(matrix.to_dict()))) == matrix
    assert load_forgetting_matrix(str(tmp_path)) == matrix
    saved = json.load(open(tmp_path / FORGETTING_MATRIX_JSON))
    assert saved["summary"]["exact_match"]["forgetting"] == pytest.approx([0.3, 0.2, None])
    rows = list(csv.DictReader(open(tmp_path / FORGETTING_MATRIX_CSV)))
    assert [(row["metric"], row["after"]) for row in rows] == [
        ("loss", "before"),
        ("loss", "1"),
        ("loss", "2"),
        ("loss", "3"),
        ("exact_match", "before"),
        ("exact_match", "1"),
        ("exact_match", "2"),
        ("exact_match", "3"),
    ]
    assert float(rows[2]["level_2"]) == LOSS[1][1]
    with open(tmp_path / FORGETTING_HEATMAP_PNG, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]  # atomic writes left nothing behind


def test_heatmap_is_skipped_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes `import matplotlib.figure` fail
    paths = save_forgetting_matrix(make_matrix(), str(tmp_path))
    assert set(paths) == {"json", "csv"}
    assert not (tmp_path / FORGETTING_HEATMAP_PNG).exists()


def test_resumed_run_keeps_the_rows_of_finished_stages(tmp_path):
    save_forgetting_matrix(make_matrix(), str(tmp_path))
    eval_dataset = Dataset.from_dict({"level": [1, 2, 3]})
    trainer = SimpleNamespace(
        args=SimpleNamespace(output_dir=str(tmp_path)),
        stages=[Stage(index, (index + 1,), 8, 16.0) for index in range(3)],
    )
    callback = StageEvaluationCallback(trainer, eval_dataset, [1, 2, 3])
    callback._restore_rows(first_stage_index=2)  # resumed in stage 3: stages 1 and 2 were finished
    assert sorted(callback.matrix.after_stage) == [1, 2]
    assert callback.matrix.before == make_matrix().before
    fresh = StageEvaluationCallback(trainer, eval_dataset, [1, 2, 3])
    fresh._restore_rows(first_stage_index=0)  # a new run in the same output_dir starts a new matrix
    assert fresh.matrix.after_stage == {} and fresh.matrix.before == {}


# --------------------------------------------------------------------------------------------------------------------
# Configuration


def config(tmp_path, **kwargs):
    defaults = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", save_strategy="no")
    return PLRSConfig(**{**defaults, **kwargs})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(stage_eval_max_problems_per_level=0), "`stage_eval_max_problems_per_level` must be a positive integer"),
        (dict(stage_eval_max_new_tokens=-1), "`stage_eval_max_new_tokens` must be a positive integer"),
        (dict(early_stopping_patience=0, eval_strategy="steps"), "`early_stopping_patience` must be a positive"),
        (dict(early_stopping_patience=2), "needs evaluations during each stage, but `eval_strategy` is 'no'"),
        (
            dict(stage_eval_per_level=False, stage_eval_generate=True),
            r"`stage_eval_per_level=False` turns off the evaluation per level, which \['stage_eval_generate'\]",
        ),
    ],
)
def test_config_validation(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        config(tmp_path, **kwargs)


def test_early_stopping_defaults_to_the_eval_loss(tmp_path):
    args = config(tmp_path, early_stopping_patience=2, eval_strategy="epoch")
    assert (args.metric_for_best_model, args.greater_is_better) == ("loss", False)


# --------------------------------------------------------------------------------------------------------------------
# In the trainer

LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"], lora_dropout=0.0)


@pytest.fixture(scope="module")
def math_splits():
    """Synthetic MATH train/test; validation is split from TRAIN. Test ids are prefixed so any leak is visible."""
    train = make_synthetic_math(num_per_level=10, levels=(1, 2, 3), seed=0)
    test = make_synthetic_math(num_per_level=4, levels=(1, 2, 3), seed=1)
    test = test.map(lambda row: {"unique_id": "test/" + row["unique_id"]})
    splits = split_train_validation(train, validation_size=9, seed=0)
    tokenizer = build_tokenizer(corpus=math_corpus(train))
    return {
        "train": splits["train"].map(to_prompt_completion),
        "validation": splits["validation"].map(to_prompt_completion),
        "test": test,
        "tokenizer": tokenizer,
    }


class SeparateEvaluation(CurriculumCallback):
    """After every stage (after the stage evaluation ran), evaluates each level again, independently."""

    def __init__(self, validation, cap):
        self.validation, self.cap = validation, cap
        self.trainer, self.losses, self.exact_match = None, [], []

    def on_stage_end(self, args, state, control, stage, **kwargs):
        losses, exact_match = {}, {}
        for level in (1, 2, 3):
            rows = self.validation.filter(lambda row: row["level"] == level)
            losses[level] = self.trainer.evaluate(eval_dataset=rows)["eval_loss"]
            report = trl_plrs.math.evaluation.evaluate_math(
                self.trainer.model,
                self.trainer.processing_class,
                rows.select(range(self.cap)),
                max_new_tokens=args.stage_eval_max_new_tokens,
                show_progress=False,
            )
            exact_match[level] = report["overall"]["accuracy_strict"]
        self.losses.append(losses)
        self.exact_match.append(exact_match)


def test_forgetting_matrix_matches_separate_evaluations_and_never_reads_test(tmp_path, math_splits, monkeypatch):
    tokenizer = math_splits["tokenizer"]
    validation = math_splits["validation"]
    separate = SeparateEvaluation(validation, cap=2)
    args = config(
        tmp_path,
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=5e-3,
        disable_tqdm=True,
        stage_eval_generate=True,
        stage_eval_max_problems_per_level=2,
        stage_eval_max_new_tokens=4,
        stage_eval_before_training=True,
    )
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=args,
        train_dataset=math_splits["train"],
        eval_dataset=validation,
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
        callbacks=[separate],
    )
    separate.trainer = trainer

    # Record every row the trainer trains on or evaluates (loss or generation) during training and selection.
    seen = {"train": set(), "eval": set()}
    get_train_dataloader, get_eval_dataloader = trainer.get_train_dataloader, trainer.get_eval_dataloader
    evaluate_math = trl_plrs.math.evaluation.evaluate_math

    def recording_train_dataloader(*a, **kw):
        seen["train"] |= set(trainer.train_dataset["unique_id"])
        return get_train_dataloader(*a, **kw)

    def recording_eval_dataloader(eval_dataset=None):
        dataset = eval_dataset if eval_dataset is not None else trainer.eval_dataset
        seen["eval"] |= set(dataset["unique_id"])
        return get_eval_dataloader(eval_dataset)

    def recording_evaluate_math(model, tokenizer, dataset, *a, **kw):
        seen["eval"] |= set(dataset["unique_id"])
        return evaluate_math(model, tokenizer, dataset, *a, **kw)

    monkeypatch.setattr(trainer, "get_train_dataloader", recording_train_dataloader)
    monkeypatch.setattr(trainer, "get_eval_dataloader", recording_eval_dataloader)
    monkeypatch.setattr(trl_plrs.math.evaluation, "evaluate_math", recording_evaluate_math)
    trainer.train()

    test_ids = set(math_splits["test"]["unique_id"])
    assert seen["train"] == set(math_splits["train"]["unique_id"])
    assert seen["eval"] == set(validation["unique_id"])
    assert not (seen["train"] | seen["eval"]) & test_ids
    assert not seen["train"] & seen["eval"]  # validation rows were split off the training rows

    matrix = load_forgetting_matrix(str(tmp_path))
    assert matrix.levels == [1, 2, 3]
    assert sorted(matrix.after_stage) == [1, 2, 3]
    assert set(matrix.before) == {"loss", "exact_match"}
    for stage in range(3):
        row = matrix.after_stage[stage + 1]
        assert row["loss"] == pytest.approx([separate.losses[stage][level] for level in (1, 2, 3)], abs=1e-5)
        assert row["exact_match"] == [separate.exact_match[stage][level] for level in (1, 2, 3)]
    assert (tmp_path / FORGETTING_HEATMAP_PNG).stat().st_size > 0
    assert "![](forgetting_heatmap.png)" in (tmp_path / "README.md").read_text()  # the model card shows it
    assert (tmp_path / FORGETTING_MATRIX_CSV).exists()
    for name in ("before_training", "after_stage-1", "after_stage-3"):
        with open(tmp_path / "stage_eval" / name / "predictions.csv") as file:
            assert len(list(csv.DictReader(file))) == 3 * 2  # capped at 2 problems per level

    # logged through `log()`, so TensorBoard/W&B see eval/level_<j>/...
    logged = {key for entry in trainer.state.log_history for key in entry}
    for level in (1, 2, 3):
        assert {f"eval_level_{level}/loss", f"eval_level_{level}/exact_match"} <= logged
    assert {"eval_retention/backward_transfer_loss", "eval_retention/forward_transfer_exact_match"} <= logged
    assert trainer.stage_summaries[-1].eval_per_level["loss"]["1"] == matrix.after_stage[3]["loss"][0]
    # after the curriculum, `evaluate()` sees every level again
    assert len(trainer.eval_dataset) == len(validation)


def adapter_weights(model):
    return {
        key: value.detach().clone()
        for key, value in get_peft_model_state_dict(model, adapter_name=DEFAULT_ADAPTER).items()
    }


class BestCheckpointRecorder(CurriculumCallback):
    def __init__(self):
        self.trainer, self.stages = None, []

    def on_stage_end(self, args, state, control, stage, model, **kwargs):
        checkpoints = sorted(
            (name for name in os.listdir(args.output_dir) if name.startswith("checkpoint-")),
            key=lambda name: int(name.split("-")[1]),
        )
        self.stages.append(
            {
                "steps": state.global_step - self.trainer.curriculum_state.stage_start_step,
                "eval_levels": sorted(set(self.trainer.eval_dataset["level"])),
                "best_checkpoint": state.best_model_checkpoint,
                "best_metric": state.best_metric,
                "last_checkpoint": os.path.join(args.output_dir, checkpoints[-1]),
                "weights": adapter_weights(model),
                "eval_loss": self.trainer.evaluate()["eval_loss"],
            }
        )


def test_early_stopping_per_stage_restores_the_best_checkpoint(tmp_path, math_splits):
    tokenizer = math_splits["tokenizer"]
    recorder = BestCheckpointRecorder()
    max_steps = 6
    args = config(
        tmp_path,
        per_device_train_batch_size=4,
        max_steps=max_steps,
        learning_rate=0.1,  # large enough that the validation loss soon stops improving
        warmup_steps=0,
        disable_tqdm=True,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        early_stopping_patience=1,
        adapter_transition="stack",  # the best adapter must be loaded into "default", not a frozen stage adapter
    )
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=args,
        train_dataset=math_splits["train"],
        eval_dataset=math_splits["validation"],
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
        callbacks=[recorder],
    )
    recorder.trainer = trainer
    trainer.train()

    assert [record["eval_levels"] for record in recorder.stages] == [[1], [1, 2], [1, 2, 3]]  # levels seen so far
    stopped = [record for record in recorder.stages if record["steps"] < max_steps]
    assert stopped, f"no stage stopped early: {[record['steps'] for record in recorder.stages]}"
    for record in recorder.stages:
        best = load_file(os.path.join(record["best_checkpoint"], "adapter_model.safetensors"))
        assert best.keys() == record["weights"].keys()
        for key, value in best.items():
            torch.testing.assert_close(record["weights"][key], value)
        assert record["eval_loss"] == pytest.approx(record["best_metric"], abs=1e-5)
    for record in stopped:  # the restore did something: the stage's last weights were not its best
        last = load_file(os.path.join(record["last_checkpoint"], "adapter_model.safetensors"))
        assert any(not torch.equal(last[key], value) for key, value in record["weights"].items())
    early_stopping = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EarlyStoppingCallback)]
    assert len(early_stopping) == 1


@pytest.mark.parametrize(
    "eval_rows, kwargs, match",
    [
        ("no_level", dict(stage_eval_generate=True), "asks for evaluation per curriculum level, but the prepared"),
        (None, dict(stage_eval_before_training=True), "but no `eval_dataset` was passed"),
        ("no_problem", dict(stage_eval_generate=True), "needs a `problem` column and an `answer` or `solution`"),
    ],
)
def test_per_level_evaluation_requirements_are_checked_at_init(tmp_path, tokenizer, eval_rows, kwargs, match):
    eval_dataset = {
        None: None,
        "no_level": make_leveled_dataset(rows_per_level=2).remove_columns("level"),
        "no_problem": make_leveled_dataset(rows_per_level=2),
    }[eval_rows]
    with pytest.raises(ValueError, match=match):
        CurriculumSFTTrainer(
            build_tiny_model(tokenizer),
            args=config(tmp_path, max_steps=1, **kwargs),
            train_dataset=make_leveled_dataset(rows_per_level=2),
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(**LORA),
        )


def test_eval_dataset_without_levels_is_refused_unless_asked_for(tmp_path):
    from datasets import Dataset

    from .test_plrs_trainer import lora_config, make_args

    tokenizer = build_tokenizer()
    eval_rows = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": "1 + 1?"}], "completion": [{"role": "assistant", "content": "2"}]}]
        * 4
    )

    def build(**kwargs):
        return CurriculumSFTTrainer(
            build_tiny_model(tokenizer),
            args=make_args(tmp_path, **kwargs),
            train_dataset=make_synthetic_math(num_per_level=4, levels=(1, 2, 3)).map(to_prompt_completion),
            eval_dataset=eval_rows,
            processing_class=tokenizer,
            peft_config=lora_config(),
        )

    with pytest.raises(ValueError, match="The `eval_dataset` has no `curriculum_column` 'level'"):
        build()
    assert build(stage_eval_per_level=False).stage_evaluation is None  # evaluated as a whole, on purpose


def test_an_evaluation_at_the_stage_end_is_not_repeated(tmp_path, tokenizer):
    """With `eval_strategy`, the Trainer evaluates at each stage's last step: the stage's row reuses those losses."""
    from .test_plrs_trainer import lora_config, make_args

    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(str(tmp_path), eval_strategy="epoch"),
        train_dataset=make_leveled_dataset(),
        eval_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    trainer.train()

    per_level = [entry for entry in trainer.state.log_history if "eval_levels_runtime" in entry]
    steps = [entry["step"] for entry in per_level]
    assert len(steps) == len(set(steps)), f"per-level losses logged twice at a step: {steps}"
    stage_ends = [sum(summary.steps for summary in trainer.stage_summaries[: k + 1]) for k in range(3)]
    assert set(stage_ends) <= set(steps)
    for summary, step in zip(trainer.stage_summaries, stage_ends, strict=True):
        logged = next(entry for entry in per_level if entry["step"] == step)
        assert summary.eval_per_level["loss"] == {
            str(level): logged[f"eval_level_{level}/loss"] for level in (1, 2, 3)
        }


def test_the_evaluation_before_training_is_not_stage_1s_time(tmp_path, tokenizer):
    """`stage_eval_before_training` evaluates every level before stage 1 trains; stage 1's `train_runtime` leaves it
    out (here it takes 3 s more; the stage's own 4 steps take a fraction of that)."""
    from transformers import TrainerCallback

    from .test_plrs_trainer import lora_config, make_args

    class SlowEvaluationBeforeTraining(TrainerCallback):
        slept = False

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.global_step == 0 and "eval_levels_runtime" in (logs or {}):
                time.sleep(3)
                self.slept = True

    slow = SlowEvaluationBeforeTraining()
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(str(tmp_path), stage_eval_before_training=True),
        train_dataset=make_leveled_dataset(),
        eval_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=[slow],
    )
    trainer.train()
    assert slow.slept
    assert trainer.stage_summaries[0].train_runtime < 3

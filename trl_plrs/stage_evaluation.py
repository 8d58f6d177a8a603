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
Retention during the curriculum: the [`StageEvaluationCallback`] evaluates every level after every stage (loss, and
exact match on MATH-like rows), keeps the forgetting matrix (`trl_plrs.forgetting`) and restricts model selection and
early stopping to the levels seen so far.
"""

import glob
import os
import time

from accelerate.logging import get_logger
from datasets import Dataset
from transformers import Trainer
from transformers.trainer_callback import EarlyStoppingCallback

from .callbacks import CurriculumCallback
from .curriculum import Stage, dataset_levels, parse_level
from .forgetting import (
    FORGETTING_MATRIX_JSON,
    ForgettingMatrix,
    load_forgetting_matrix,
    save_forgetting_matrix,
)
from .trainer_internals import close_prediction_bars, pop_accumulated_metrics


logger = get_logger(__name__)

STAGE_EVAL_DIR = "stage_eval"


# --------------------------------------------------------------------------------------------------------------------
# Evaluation per level inside the trainer


def _system_prompt_of(dataset: Dataset) -> str | None:
    """The system prompt the eval rows were formatted with (conversational `prompt`), else the default one."""
    if "prompt" in dataset.column_names and len(dataset) > 0:
        prompt = dataset[0]["prompt"]
        if isinstance(prompt, list):
            return prompt[0]["content"] if prompt and prompt[0].get("role") == "system" else None
    from .math.data import SYSTEM_PROMPT  # the MATH code is loaded only for the exact match

    return SYSTEM_PROMPT


class StageEarlyStoppingCallback(EarlyStoppingCallback):
    """
    The [`~transformers.EarlyStoppingCallback`] of `early_stopping_patience`: its stop ends a stage, where any other
    stop request ends the curriculum. A class of its own, so that the trainer finds it among the callbacks (the Trainer
    replaces callback instances when it restores their state from a checkpoint) and tells it from a user's.
    """


def find_stage_early_stopping(callbacks) -> StageEarlyStoppingCallback | None:
    """The [`StageEarlyStoppingCallback`] among `callbacks`, if any."""
    return next((callback for callback in callbacks if isinstance(callback, StageEarlyStoppingCallback)), None)


class StageEvaluationCallback(CurriculumCallback):
    """
    Evaluates a [`CurriculumSFTTrainer`] on each level of its `eval_dataset` and keeps the forgetting matrix; created
    by the trainer when the evaluation data has the curriculum column. It reads the trainer and returns what the
    trainer stores.

    - [`begin_stage`] gives the evaluation rows of the levels seen so far (stages 1..k): the trainer makes them its
      `eval_dataset`, so that `eval_loss`, `metric_for_best_model` and early stopping look at those levels only.
      With `stage_eval_before_training`, the first stage begins with the evaluation of every level, for forward
      transfer.
    - At every evaluation during training (`eval_strategy`), the loss of every level is logged as
      `eval_level_<j>/loss` (TensorBoard and W&B show `eval/level_<j>/loss`).
    - [`end_stage`], called by the trainer at the end of every stage (after the best model was loaded, with
      `load_best_model_at_end`), logs the loss of every level and, with `stage_eval_generate`, the exact match on up to
      `stage_eval_max_problems_per_level` problems per level; they form the stage's row of the matrix, saved to
      `output_dir` as `forgetting_matrix.json`, `forgetting_matrix.csv` and `forgetting_heatmap.png`; the predictions
      are kept in `output_dir/stage_eval/after_stage-<k>/predictions.csv` (inputs of
      [`~trl_plrs.math.transitions.answer_transitions`]).
    """

    def __init__(self, trainer: Trainer, eval_dataset: Dataset, eval_levels: list[int | None]):
        self.trainer = trainer
        self.eval_dataset = eval_dataset
        self.eval_levels = eval_levels
        self.levels = sorted({level for level in eval_levels if level is not None})
        self.level_datasets = {
            level: eval_dataset.select([i for i, row_level in enumerate(eval_levels) if row_level == level])
            for level in self.levels
        }
        self.matrix = ForgettingMatrix(self.levels, [list(stage.levels) for stage in trainer.stages])
        self.system_prompt = _system_prompt_of(eval_dataset)
        self._first_stage_seen = None
        self._latest = None  # (step, per-level row) of the latest evaluation during training

    # Stage boundaries (called by the trainer) ----------------------------------------------------------------------

    def begin_stage(self, stage: Stage) -> Dataset:
        """The evaluation rows of the levels seen by stages 1..`stage`; evaluates every level before stage 1 first."""
        args = self.trainer.args
        if self._first_stage_seen is None:
            self._first_stage_seen = stage.index
            self._restore_rows(stage.index)
        if stage.index == 0 and args.stage_eval_before_training and not self.matrix.before:
            self.matrix.before = self.evaluate_levels(
                generate=args.stage_eval_generate,
                predictions_dir=os.path.join(STAGE_EVAL_DIR, "before_training"),
                label="Eval before training",
            )
            self._save()
        seen = {level for earlier in self.trainer.stages[: stage.index + 1] for level in earlier.levels}
        return self.eval_dataset.select([i for i, level in enumerate(self.eval_levels) if level in seen])

    def end_stage(self, stage: Stage) -> dict[str, dict[str, float | None]]:
        """Evaluate every level after `stage`, log the retention metrics, save the matrix; returns the stage's row."""
        trainer, args = self.trainer, self.trainer.args
        row = self._evaluated_at_this_step()
        if row is None:
            row = self.evaluate_levels(
                generate=args.stage_eval_generate,
                predictions_dir=os.path.join(STAGE_EVAL_DIR, f"after_stage-{stage.number}"),
                label=f"Eval after stage {stage.number}/{len(trainer.stages)}",
            )
        self.matrix.after_stage[stage.number] = row
        logs = {}
        for metric, derived in self.matrix.summary().items():
            for name in ("average_final", "backward_transfer", "forward_transfer"):
                if derived[name] is not None:
                    logs[f"eval_retention/{name}_{metric}"] = derived[name]
            for level, value in zip(self.levels, derived["forgetting"]):
                if value is not None:
                    logs[f"eval_level_{level}/forgetting_{metric}"] = value
        if logs:
            trainer.log(logs)
        self._save()
        return {metric: dict(zip(map(str, self.levels), values)) for metric, values in row.items()}

    def _evaluated_at_this_step(self) -> dict[str, list[float | None]] | None:
        """
        The per-level row of the Trainer's evaluation at the current step (`eval_strategy` evaluates at a stage's last
        step too), when it is the stage's final model's: no exact match asked, no best model loaded since. Evaluating
        again would log the same losses twice.
        """
        args, state = self.trainer.args, self.trainer.state
        if self._latest is None or self._latest[0] != state.global_step or args.stage_eval_generate:
            return None
        best = state.best_model_checkpoint
        if args.load_best_model_at_end and best and not best.endswith(f"-{state.global_step}"):
            return None
        return self._latest[1]

    # Events -------------------------------------------------------------------------------------------------------

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # The Trainer's own evaluation during a stage (the levels seen so far); add the loss of every level.
        if getattr(self.trainer, "is_in_train", False):
            self._latest = (
                state.global_step,
                self.evaluate_levels(generate=False, label=f"Eval at step {state.global_step}"),
            )

    # Evaluation ---------------------------------------------------------------------------------------------------

    def evaluate_levels(
        self, generate: bool, predictions_dir: str | None = None, label: str = "Eval"
    ) -> dict[str, list[float | None]]:
        """
        Loss (and exact match, if `generate`) of the current model on every level; logs them through the trainer's
        `log()` as `eval_level_<j>/<metric>` and returns `{metric: [value per level]}`. `label` names the progress
        bars (one for the losses of all levels, one for the generation).
        """
        trainer = self.trainer
        start_time = time.time()
        logs, row = {}, {"loss": []}
        progress = trainer.progress_callback
        bar = (
            progress.evaluation_bar(f"{label}: loss of levels {_span(self.levels)}", len(self.levels))
            if progress
            else None
        )
        try:
            for level in self.levels:
                metrics = self._loss_metrics(self.level_datasets[level], description=f"Evaluation of level {level}")
                row["loss"].append(metrics["loss"])
                logs.update({f"eval_level_{level}/{name}": value for name, value in metrics.items()})
                if bar is not None:
                    bar.update()
        finally:
            if progress is not None:
                progress.close_evaluation_bar()
        if generate:
            accuracy = self._exact_match(predictions_dir, f"{label}: exact match of levels {_span(self.levels)}")
            row["exact_match"] = [accuracy.get(level, {}).get("strict") for level in self.levels]
            for level in self.levels:
                for mode, value in accuracy.get(level, {}).items():
                    suffix = "" if mode == "strict" else f"_{mode}"
                    logs[f"eval_level_{level}/exact_match{suffix}"] = value
        logs["eval_levels_runtime"] = round(time.time() - start_time, 4)
        trainer.log(logs)
        return row

    def _loss_metrics(self, dataset: Dataset, description: str) -> dict[str, float]:
        trainer = self.trainer
        output = trainer.evaluation_loop(
            trainer.get_eval_dataloader(dataset),
            description=description,
            prediction_loss_only=True,
            metric_key_prefix="eval",
        )
        # Not sent `on_evaluate` (it would count as a full evaluation for early stopping), so the bar is closed here.
        close_prediction_bars(trainer.callback_handler.callbacks)
        # SFTTrainer accumulates token accuracy and entropy per batch and adds them to the next `log()`; they are
        # taken here so that they are reported per level rather than mixed over levels.
        return {"loss": output.metrics["eval_loss"], **pop_accumulated_metrics(trainer, "eval")}

    def _exact_match(self, predictions_dir: str | None, label: str) -> dict[int, dict[str, float]]:
        from .math.evaluation import PART_FILENAME_PATTERN, PREDICTIONS_FILENAME, evaluate_math

        trainer, args = self.trainer, self.trainer.args
        cap = args.stage_eval_max_problems_per_level
        capped = [
            self.level_datasets[level].select(range(min(cap, len(self.level_datasets[level]))))
            for level in self.levels
        ]
        rows = [
            row
            for dataset in capped
            for row in dataset.select_columns(_GENERATION_COLUMNS & set(dataset.column_names)).to_list()
        ]
        problems = Dataset.from_list(rows)
        output_dir = None
        if predictions_dir is not None and args.should_save:
            output_dir = os.path.join(args.output_dir, predictions_dir)
            # A resumed stage trains again: its predictions must come from the new weights.
            stale = [os.path.join(output_dir, PREDICTIONS_FILENAME)]
            for path in stale + glob.glob(os.path.join(output_dir, PART_FILENAME_PATTERN)):
                if os.path.exists(path):
                    os.remove(path)
        # The problems are split across processes, as in `evaluate_math`, except under ZeRO-3, whose every forward pass
        # needs every process: there every process generates every problem. Only the main process writes the files.
        zero3 = args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3
        report = evaluate_math(
            trainer.model,
            trainer.processing_class,
            problems,
            batch_size=args.per_device_eval_batch_size,
            max_new_tokens=args.stage_eval_max_new_tokens,
            output_dir=output_dir,
            system_prompt=self.system_prompt,
            show_progress=not args.disable_tqdm and trainer.is_world_process_zero(),
            progress_label=label,
            shard_across_processes=not zero3,
        )
        accuracy = {}
        for key, group in report["per_level"].items():
            level = parse_level(key)
            if level is not None:
                accuracy[level] = {
                    name.removeprefix("accuracy_"): value
                    for name, value in group.items()
                    if name.startswith("accuracy_")
                }
        return accuracy

    # Files --------------------------------------------------------------------------------------------------------

    def _save(self) -> None:
        if self.trainer.args.should_save:
            save_forgetting_matrix(self.matrix, self.trainer.args.output_dir)

    def _restore_rows(self, first_stage_index: int) -> None:
        # A resumed run keeps the rows of the stages finished before the interruption; a run starting at the first
        # stage begins a new matrix (an old file in `output_dir` belongs to another run).
        path = os.path.join(self.trainer.args.output_dir, FORGETTING_MATRIX_JSON)
        if first_stage_index == 0 or not os.path.isfile(path):
            return
        saved = load_forgetting_matrix(path)
        if saved.levels != self.matrix.levels or saved.stage_levels != self.matrix.stage_levels:
            logger.warning(f"Ignoring {path}: it was written for other levels or stages than this curriculum's.")
            return
        self.matrix.before = saved.before
        self.matrix.after_stage = {
            stage: row for stage, row in saved.after_stage.items() if stage <= first_stage_index
        }


def _span(levels: list[int]) -> str:
    """`1-5` for consecutive levels, else `1,3,4`."""
    if len(levels) > 2 and levels == list(range(levels[0], levels[-1] + 1)):
        return f"{levels[0]}-{levels[-1]}"
    return ",".join(map(str, levels))


_GENERATION_COLUMNS = {"problem", "solution", "answer", "level", "type", "unique_id"}


def stage_evaluation_levels(args, eval_dataset, stages: list[Stage]) -> list[int | None] | None:
    """
    Check the evaluation data against the curriculum and return the level of each of its rows, or `None` when the
    evaluation per level is off (`stage_eval_per_level=False`, or data without levels that is evaluated as a whole).
    Raises when a setting asks for per-level evaluation that the data cannot give.
    """
    column = args.curriculum_column
    has_column = isinstance(eval_dataset, Dataset) and column in eval_dataset.column_names
    if args.stage_eval_per_level is False:
        return None
    if args.eval_packing and eval_dataset is not None and not has_column:
        logger.warning(
            f"`eval_packing=True` packed the `eval_dataset`, which drops its `curriculum_column` {column!r}: the "
            "evaluation per level and the forgetting matrix are off, and `eval_loss` mixes every level, future ones "
            "included. Set `eval_packing=False` to evaluate per level."
        )
    if not has_column:
        _check_data_without_levels(args, eval_dataset)
        return None
    eval_levels = dataset_levels(eval_dataset, column)
    _check_levels(args, eval_dataset, eval_levels, stages)
    return eval_levels


def _check_data_without_levels(args, eval_dataset) -> None:
    column = args.curriculum_column
    required = {
        name: getattr(args, name)
        for name in (
            "stage_eval_per_level",
            "stage_eval_generate",
            "stage_eval_before_training",
            "early_stopping_patience",
        )
        if getattr(args, name) not in (None, False)
    }
    if required:
        settings = ", ".join(f"`{name}={value!r}`" for name, value in required.items())
        found = (
            "no `eval_dataset` was passed"
            if eval_dataset is None
            else f"the prepared `eval_dataset` has no column {column!r} (it is a `{type(eval_dataset).__name__}`"
            + (f" with columns {eval_dataset.column_names})" if isinstance(eval_dataset, Dataset) else ")")
        )
        raise ValueError(
            f"{settings} asks for evaluation per curriculum level, but {found}. Pass one `datasets.Dataset` as "
            f"`eval_dataset` with the `curriculum_column` {column!r}, e.g. the validation part of "
            "`trl_plrs.data.split_train_validation(train_dataset)` (never the test split), or unset those fields."
        )
    if isinstance(eval_dataset, Dataset) and not args.eval_packing:
        # Evaluated as a whole, `eval_loss` (and so model selection and early stopping) would mix every level,
        # including those later stages train: refused unless asked for.
        raise ValueError(
            f"The `eval_dataset` has no `curriculum_column` {column!r} (columns: {eval_dataset.column_names}), so "
            "every evaluation would mix all levels, those of later stages included. Keep the level column in the "
            "evaluation rows (e.g. the validation part of `trl_plrs.data.split_train_validation(train_dataset)`), "
            "or set `stage_eval_per_level=False` to evaluate the data as a whole on purpose."
        )
    if eval_dataset is not None and not args.eval_packing:
        logger.warning(
            f"The `eval_dataset` is a `{type(eval_dataset).__name__}`, not one `datasets.Dataset` with the "
            f"`curriculum_column` {column!r}: it is evaluated as given, not per level."
        )


def _check_levels(args, eval_dataset: Dataset, eval_levels: list[int | None], stages: list[Stage]) -> None:
    column = args.curriculum_column
    levels = sorted({level for level in eval_levels if level is not None})
    if not levels:
        raise ValueError(
            f"No row of the `eval_dataset` has a level in its `{column}` column. Fix that column, or drop it to "
            "evaluate the data as a whole."
        )
    trained = sorted({level for stage in stages for level in stage.levels})
    missing = [level for level in trained if level not in levels]
    if missing:
        logger.warning(
            f"The `eval_dataset` has no rows of the trained levels {missing}: the forgetting matrix has no column for "
            "them. Split the validation data per level, e.g. with `trl_plrs.data.split_train_validation`."
        )
    if not set(stages[0].levels) & set(levels) and args.eval_strategy != "no":
        raise ValueError(
            f"The `eval_dataset` has no rows of the first stage's levels {list(stages[0].levels)}, so the "
            f"evaluation during that stage (`eval_strategy={args.eval_strategy.value!r}`) would be empty. Add "
            "validation rows of those levels."
        )
    if args.stage_eval_generate:
        if "problem" not in eval_dataset.column_names or not {"answer", "solution"} & set(eval_dataset.column_names):
            raise ValueError(
                "`stage_eval_generate=True` generates answers to the evaluation problems, so the `eval_dataset` needs "
                f"a `problem` column and an `answer` or `solution` column, but it has {eval_dataset.column_names}. "
                "Keep them beside `prompt`/`completion` (`dataset.map(to_prompt_completion)` keeps them)."
            )
    logger.info(f"Evaluating each of the levels {levels} at every evaluation and after every stage.")

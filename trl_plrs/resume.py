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
Where a curriculum stands and how a checkpoint carries it: [`CurriculumState`], the typed [`StageSummary`] of each
finished stage, the run's fingerprint, and the choice, check, save and read of a checkpoint's curriculum state. The
Trainer's own files (weights, optimizer, RNG, `trainer_state.json`) are the Trainer's; this module adds
`curriculum_state.json` beside them.
"""

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from accelerate.logging import get_logger
from transformers.trainer_utils import speed_metrics

from .checkpointing import CURRICULUM_STATE_NAME, complete_checkpoints, read_json, write_json_atomic
from .fingerprint import as_json, fingerprint_differences


logger = get_logger(__name__)


@dataclass
class CurriculumState:
    """
    Where the curriculum stands; everything a resume needs beyond the Trainer's own state.

    Args:
        stage (`int`): Index (from 0) of the stage being trained; folders, logs and summaries number it from 1.
        stage_start_step (`int`): `global_step` at which that stage started.
        adapter_stage (`int`): Index of the stage whose adapter is the trainable `"default"` adapter.
        frozen_adapters (`list[str]`): The frozen, active adapter that carries the finished stages (stack mode:
            `["frozen_stages"]` from stage 2 on), else empty.
        trainable_params (`int`): Trainable parameters of the current stage.
        epochs_before_stage (`float`): Epochs trained by the finished stages; logged `epoch` = this + `stage_epoch`.
        stage_loss_sum (`float`): The training loss summed over the stage's steps before this `train()` call (a
            resume); a checkpoint stores it up to its step, so that a resumed stage's loss covers all its steps.
        stage_runtime (`float`): Seconds the stage trained before this `train()` call (a resume), stored the same way,
            so that a resumed stage's `train_runtime` covers all its steps (the time the run was down aside).
    """

    stage: int = 0
    stage_start_step: int = 0
    adapter_stage: int = 0
    frozen_adapters: list[str] = field(default_factory=list)
    trainable_params: int = 0
    epochs_before_stage: float = 0.0
    stage_loss_sum: float = 0.0
    stage_runtime: float = 0.0


@dataclass
class StageSummary:
    """
    What one finished stage trained; `trainer.stage_summaries` holds one per stage, in order, and checkpoints, the
    model card and the demo's `run_summary.json` carry them.

    Args:
        stage (`int`): The stage's number (from 1).
        levels (`list[int]`): The levels it trained (replay aside).
        rows (`int`): Its training rows, replay included.
        lora_rank (`int`), lora_alpha (`float`): Its adapter's rank and alpha.
        trainable_params (`int`): Its trainable parameters.
        steps (`int`): Optimizer steps it ran.
        samples (`int`): Rows it trained on, counted over its epochs.
        train_loss (`float` or `None`): Its mean training loss.
        train_runtime (`float`): Seconds it trained, from its beginning to its end (before and after a resume).
        merge_rounding_loss (`float` or `None`): Share of its update that merging into 16-bit weights rounded away
            (merge modes, once the next stage began).
        eval_per_level (`dict` or `None`): `{metric: {level: value}}` after the stage (evaluation per level).
    """

    stage: int
    levels: list[int]
    rows: int
    lora_rank: int
    lora_alpha: float
    trainable_params: int
    steps: int
    samples: int
    train_loss: float | None
    train_runtime: float
    merge_rounding_loss: float | None = None
    eval_per_level: dict[str, dict[str, float | None]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """As written to JSON files; the optional fields only when set."""
        data = dataclasses.asdict(self)
        for name in ("merge_rounding_loss", "eval_per_level"):
            if data[name] is None:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StageSummary":
        return cls(**data)


def curriculum_fingerprint(run: dict[str, Any], stages, replay, adapter_transition: str, args, row_levels, difficulty):
    """
    What a checkpoint must agree on with a trainer for a resume to continue the same run: `run` (the model, LoRA
    settings, optimizer, schedule and data; `trl_plrs.fingerprint`), the stage plan, replay, transition, seed, the
    level column and rows per level, and the computed difficulty. As it reads back from a checkpoint's JSON.
    """
    fingerprint = {
        "stages": [dataclasses.asdict(stage) for stage in stages],
        "replay": replay,
        "adapter_transition": adapter_transition,
        "seed": args.seed,
        "curriculum_column": args.curriculum_column,
        "rows_per_level": {str(level): row_levels.count(level) for level in sorted(set(row_levels))},
        "difficulty": difficulty,
        **run,
    }
    return as_json(fingerprint)


def checkpoint_to_resume(resume_from_checkpoint: str | bool | None, output_dir: str, fingerprint) -> str | None:
    """
    The checkpoint a `train(resume_from_checkpoint=...)` continues: `None`/`False` none; `True` (or `"true"`, as a
    command line gives it) this run's newest complete checkpoint in `output_dir` (checkpoints of another run, by `fingerprint`, skipped with a warning); a path
    that holds a curriculum state.
    """
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.strip().lower() in ("true", "false"):
        # `--resume_from_checkpoint True` on a command line arrives as a string (`TrainingArguments` types it `str`).
        resume_from_checkpoint = resume_from_checkpoint.strip().lower() == "true"
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        return _last_checkpoint_of_this_run(output_dir, fingerprint)
    if not os.path.isfile(os.path.join(resume_from_checkpoint, CURRICULUM_STATE_NAME)):
        raise ValueError(
            f"`resume_from_checkpoint` is {resume_from_checkpoint!r}, which holds no {CURRICULUM_STATE_NAME}: it "
            "is not a complete checkpoint of a curriculum run (it may have been interrupted while written). Pass "
            "an earlier checkpoint, or `resume_from_checkpoint=True` to pick the last complete one."
        )
    return resume_from_checkpoint


def _last_checkpoint_of_this_run(output_dir: str, fingerprint) -> str:
    """
    The newest complete checkpoint in `output_dir` written by this run (the same fingerprint). Checkpoints of
    another run that used the same folder are skipped with a warning, so a resume never continues another run.
    """
    checkpoints = complete_checkpoints(output_dir)
    if not checkpoints:
        raise ValueError(
            f"`resume_from_checkpoint=True` but `output_dir` ({output_dir}) holds no complete checkpoint. Set "
            "`save_strategy`/`save_steps` so that checkpoints are written, or start without "
            "`resume_from_checkpoint`."
        )
    others, differences_of_others = [], []
    for checkpoint in reversed(checkpoints):
        saved = read_json(os.path.join(checkpoint, CURRICULUM_STATE_NAME))["fingerprint"]
        differences = fingerprint_differences(saved, fingerprint)
        if not differences:
            if others:
                logger.warning(
                    f"Skipped the checkpoints {others} of `output_dir`: another run wrote them (they differ in "
                    f"{sorted({name for name, _, _ in differences_of_others})}). Resuming from {checkpoint}."
                )
            return checkpoint
        others.append(os.path.basename(checkpoint))
        differences_of_others = differences
    raise ValueError(
        f"`resume_from_checkpoint=True`, but every checkpoint in `output_dir` ({output_dir}: {others}) belongs to "
        f"another run: they differ from this trainer in {[name for name, _, _ in differences_of_others]}. Resume "
        "with that run's model, configuration and data, or start a new run in another `output_dir`."
    )


def write_checkpoint_state(
    checkpoint_dir: str, fingerprint, state: CurriculumState, stage_rows: list[int], summaries: list[StageSummary]
) -> None:
    """
    Write the curriculum's state into `checkpoint_dir`, before the Trainer's own files: the Trainer writes
    `trainer_state.json` last, so a checkpoint that has both is whole (see `checkpointing.is_complete_checkpoint`).
    `stage_rows` are the stage's rows, replay sample included: a resume checks it trains on the very same rows.
    """
    write_json_atomic(
        os.path.join(checkpoint_dir, CURRICULUM_STATE_NAME),
        {
            "fingerprint": fingerprint,
            "curriculum_state": dataclasses.asdict(state),
            "stage_rows": stage_rows,
            "stage_summaries": [summary.to_dict() for summary in summaries],
        },
    )


def read_checkpoint_state(checkpoint: str, fingerprint, stage_rows) -> tuple[CurriculumState, list[StageSummary]]:
    """
    The curriculum state and stage summaries of `checkpoint`, checked against this run: its `fingerprint`, and the
    rows of the stage it stopped in (`stage_rows(stage_index)` gives this trainer's).
    """
    saved = read_json(os.path.join(checkpoint, CURRICULUM_STATE_NAME))
    differences = fingerprint_differences(saved["fingerprint"], fingerprint)
    if differences:
        details = "; ".join(f"{name}: checkpoint {old!r}, now {new!r}" for name, old, new in differences[:8])
        raise ValueError(
            f"Cannot resume from {checkpoint}: it belongs to another run, whose fields "
            f"{[name for name, _, _ in differences]} differ from this trainer's ({details}). Resume with the "
            "model, configuration and training data of the run that wrote the checkpoint, or start a new run in "
            "another `output_dir`."
        )
    state = CurriculumState(**saved["curriculum_state"])
    if saved["stage_rows"] != stage_rows(state.stage):
        raise ValueError(
            f"Cannot resume from {checkpoint}: the rows of stage {state.stage + 1} (its levels plus the replay sample) "
            "differ from the checkpoint's, so the training data or `stage_rows` changed. Resume with the training "
            "data and code of the run that wrote the checkpoint."
        )
    return state, [StageSummary.from_dict(summary) for summary in saved["stage_summaries"]]


def resumed_stage_position(
    steps_in_stage: int,
    stage_closed: bool,
    max_steps: int,
    num_update_steps_per_epoch: int,
    num_train_epochs: int,
    skip_data: bool,
    gradient_accumulation_steps: int,
) -> tuple[int, int]:
    """
    Where a resumed stage's loop starts: `(epochs_trained, steps_trained_in_current_epoch)` within the stage (a
    checkpoint's `global_step` counts every stage). A checkpoint that closed its stage (its last step, or
    `stage_closed`: the step at which early stopping ended it) leaves no epoch to run: the Trainer's loop would still
    run a step (its stop flag is set only at a step's end, and a saved early-stopping state is no stop), and the stage
    then ends as it did, loading its best checkpoint with `load_best_model_at_end`.

    >>> resumed_stage_position(7, False, 12, 4, 3, True, 2)
    (1, 6)
    """
    if steps_in_stage >= max_steps or stage_closed:
        return num_train_epochs, 0
    epochs_trained = steps_in_stage // num_update_steps_per_epoch
    steps_in_epoch = steps_in_stage % num_update_steps_per_epoch if skip_data else 0
    return epochs_trained, steps_in_epoch * gradient_accumulation_steps


def curriculum_train_metrics(
    summaries: list[StageSummary], first_stage_index: int, start_time: float, total_flos: float = 0.0
) -> dict[str, float]:
    """
    The train metrics of a whole curriculum, as `SFTTrainer.train` reports them for one training: the speed of the
    stages run by this call (a resumed run does not count the earlier ones) since `start_time`, `total_flos`, and the
    loss averaged over every step of every stage.
    """
    total_steps = sum(summary.steps for summary in summaries)
    this_call = [summary for summary in summaries if summary.stage > first_stage_index]
    metrics = speed_metrics(
        "train",
        start_time,
        num_samples=sum(summary.samples for summary in this_call),
        num_steps=sum(summary.steps for summary in this_call),
    )
    metrics["total_flos"] = total_flos
    metrics["train_loss"] = sum(summary.train_loss * summary.steps for summary in summaries) / max(total_steps, 1)
    return metrics


# The run that last started in an `output_dir`, by fingerprint: a new run tells its own outputs from another run's.
RUN_RECORD_NAME = "curriculum_run.json"
# What a curriculum run writes at the top of its `output_dir` (checkpoints and computed levels aside: checkpoints are
# told apart by their own fingerprints, and the levels are this run's by the time it trains).
RUN_OUTPUT_PATTERNS = (
    "stage-*",
    "stage_eval",
    "forgetting_matrix.json",
    "forgetting_matrix.csv",
    "forgetting_heatmap.png",
    "adapter_config.json",
    "adapter_model.safetensors",
    "README.md",
    "training_args.bin",
)


def set_aside_other_runs_outputs(output_dir: str, fingerprint) -> str | None:
    """
    At the fresh start of a run: if `output_dir` holds the outputs of another run (another fingerprint, or outputs
    without a record), move them into `output_dir/previous-run-<n>/` (nothing is deleted) and return that folder; then
    record this run. A rerun of the same configuration finds its own record and moves nothing (it overwrites its
    outputs as it goes). Checkpoints stay where they are: a resume tells them apart by their fingerprints.
    """
    import glob
    import shutil

    record = os.path.join(output_dir, RUN_RECORD_NAME)
    previous = read_json(record)["fingerprint"] if os.path.isfile(record) else None
    outputs = sorted(
        {path for pattern in RUN_OUTPUT_PATTERNS for path in glob.glob(os.path.join(output_dir, pattern))}
    )
    moved_to = None
    if outputs and (previous is None or fingerprint_differences(previous, fingerprint)):
        number = 1
        while os.path.exists(os.path.join(output_dir, f"previous-run-{number}")):
            number += 1
        moved_to = os.path.join(output_dir, f"previous-run-{number}")
        os.makedirs(moved_to)
        for path in outputs + ([record] if previous is not None else []):
            shutil.move(path, os.path.join(moved_to, os.path.basename(path)))
        logger.warning(
            f"`output_dir` ({output_dir}) held the outputs of another run (stage adapters, evaluations, the combined "
            f"adapter): moved to {moved_to}, so that the folder holds this run's alone. Use a new `output_dir` per "
            "run to keep them apart; to continue that run, resume it with its own configuration."
        )
    os.makedirs(output_dir, exist_ok=True)
    write_json_atomic(record, {"fingerprint": fingerprint})
    return moved_to

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
Where each stage's rows come from: the checks and level parsing of the training data, the stage plan's checks against
the prepared rows, and the rows of a stage (its levels plus the replay sample of `trl_plrs.replay`), packed when
`packing=True`.
"""

from accelerate.logging import get_logger
from datasets import Dataset
from trl import pack_dataset

from .curriculum import Stage, dataset_levels
from .difficulty import DIFFICULTY_ROW_COLUMN, method_name
from .replay import stage_row_indices


logger = get_logger(__name__)


def check_train_dataset(train_dataset) -> None:
    if train_dataset is None:
        raise ValueError("`train_dataset` is required: the curriculum is built from its levels.")
    if not isinstance(train_dataset, Dataset):
        raise ValueError(
            f"`train_dataset` must be a map-style `datasets.Dataset`, but the value passed is a "
            f"`{type(train_dataset).__name__}`: each stage selects rows by level. Load it without `streaming=True`."
        )
    if len(train_dataset) == 0:
        raise ValueError("`train_dataset` is empty. Pass a dataset with at least one row per curriculum level.")
    columns = set(train_dataset.column_names)
    if {"problem", "solution"} <= columns and not columns & {"prompt", "completion", "messages", "text", "input_ids"}:
        raise ValueError(
            f"The training dataset has raw MATH columns ({sorted(columns)}) but no `prompt`/`completion`, `messages` "
            "or `text` for `SFTTrainer` to train on. Convert the rows first: `dataset.map(to_prompt_completion)` "
            "(from `trl_plrs`), which keeps the `level` column."
        )


def select_leveled_rows(train_dataset, args) -> tuple[Dataset, list[int]]:
    """Parse each row's level; drop (or reject) rows without one. Returns the dataset and the level of each row."""
    check_train_dataset(train_dataset)
    column = args.curriculum_column
    if column not in train_dataset.column_names:
        raise ValueError(
            f"`curriculum_column` is {column!r}, but the training dataset has no such column (columns: "
            f"{train_dataset.column_names}). Set `curriculum_column` to the column that holds each row's level, or, "
            "for data without levels (e.g. GSM8K), set `curriculum_difficulty='base_loss'` (or 'length') to compute "
            "them."
        )
    levels = dataset_levels(train_dataset, column)
    unknown = [index for index, level in enumerate(levels) if level is None]
    if unknown:
        examples = sorted({repr(train_dataset[index][column]) for index in unknown[:5]})
        if not args.drop_unknown_levels:
            raise ValueError(
                f"{len(unknown)} rows of the training dataset have a `{column}` value that is not a level (e.g. "
                f"{', '.join(examples)}). Fix or remove those rows, or set `drop_unknown_levels=True` to drop them."
            )
        logger.warning(
            f"Dropped {len(unknown)} training rows whose `{column}` is not a level (e.g. {', '.join(examples)})."
        )
        keep = [index for index, level in enumerate(levels) if level is not None]
        train_dataset = train_dataset.select(keep)
        levels = [levels[index] for index in keep]
    return train_dataset, levels


def prepare_for_computed_levels(train_dataset, eval_dataset, args):
    """
    With `curriculum_difficulty`, the levels are computed: a `curriculum_column` in the data is set aside (the
    computed levels win, with a warning), and each training row keeps its index in the dataset passed, for
    `difficulty.csv`.
    """
    check_train_dataset(train_dataset)
    column, method = args.curriculum_column, method_name(args.curriculum_difficulty)
    if column in train_dataset.column_names:
        logger.warning(
            f"The training dataset has a `curriculum_column` {column!r}, and `curriculum_difficulty={method!r}` is set: "
            f"the computed levels win and the column is not used. Unset `curriculum_difficulty` to use the column."
        )
        train_dataset = train_dataset.remove_columns(column)
    if isinstance(eval_dataset, Dataset) and column in eval_dataset.column_names:
        eval_dataset = eval_dataset.remove_columns(column)  # binned with the training rows' thresholds instead
    train_dataset = train_dataset.add_column(DIFFICULTY_ROW_COLUMN, list(range(len(train_dataset))))
    return train_dataset, eval_dataset


def check_every_stage_trains(stages: list[Stage], row_levels: list[int], replay, args) -> None:
    """Fail before training when a stage would run no optimizer step."""
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise ValueError(
            f"`num_train_epochs` is {args.num_train_epochs} and `max_steps` is {args.max_steps}, so no stage would "
            "train. Set `num_train_epochs` (per stage) to a positive number, or `max_steps` (per stage) to a "
            "positive integer."
        )
    rows_per_batch = args.per_device_train_batch_size * args.world_size
    for stage in stages:
        if not any(level in stage.levels for level in row_levels):
            raise ValueError(
                f"Stage {stage.number} (levels {list(stage.levels)}) has no training rows left after dataset "
                "preparation (rows whose completion is empty after truncation are dropped). Raise `max_length`, "
                "or change `curriculum_stages` so that every stage has rows."
            )
        rows = len(stage_row_indices(row_levels, stages, stage.index, replay, args.seed))
        if args.dataloader_drop_last and rows < rows_per_batch:
            raise ValueError(
                f"Stage {stage.number} (levels {list(stage.levels)}) has {rows} rows, fewer than one batch "
                f"({rows_per_batch} = `per_device_train_batch_size` x processes), and `dataloader_drop_last=True` "
                "would drop them all, so the stage would run no optimizer step. Set `dataloader_drop_last=False` or "
                "lower `per_device_train_batch_size`."
            )


def stage_rows(row_levels: list[int], stages: list[Stage], stage: Stage, replay, seed: int) -> list[int]:
    """Indices, in the prepared training rows, of the rows of `stage`: its levels plus the replay sample."""
    return stage_row_indices(row_levels, stages, stage.index, replay, seed)


def pack_stage_rows(rows: Dataset, args) -> Dataset:
    """
    With `packing=True`, pack a stage's rows with TRL's packing (`trl.pack_dataset`, `packing_strategy`, up to
    `max_length` tokens per sequence), as `SFTTrainer` packs its whole training set; else return them as they
    are. Each stage packs its own rows, so a packed sequence never holds a row of another stage.
    """
    if not args.packing:
        return rows
    rows = rows.select_columns(["input_ids", "labels"])
    if args.shuffle_dataset:
        rows = rows.shuffle(seed=args.seed)
    map_kwargs = {"desc": "Packing the stage's rows"}
    if args.dataset_num_proc is not None:
        map_kwargs["num_proc"] = args.dataset_num_proc
    packed = pack_dataset(rows, args.max_length, args.packing_strategy, map_kwargs)
    return packed.shuffle(seed=args.seed) if args.shuffle_dataset else packed


def warn_unused_levels(row_levels: list[int], stages: list[Stage], args) -> None:
    """Warn about levels that have rows but no stage."""
    unused = sorted(set(row_levels) - {level for stage in stages for level in stage.levels})
    if unused:
        logger.warning(
            f"The training dataset has rows of levels {unused}, which no stage of `curriculum_stages` "
            f"({args.curriculum_stages}) trains on. Add them to a stage to use them."
        )


def prepared_row_levels(prepared: Dataset, rows_passed: int, args) -> list[int]:
    """
    The level of every prepared (tokenized) training row, read again after preparation, which may drop rows (a
    completion that truncation removed entirely: reported) but must keep the `curriculum_column`.
    """
    column = args.curriculum_column
    if column not in prepared.column_names:
        raise ValueError(
            f"The prepared training dataset lost the `curriculum_column` {column!r} (columns: "
            f"{prepared.column_names}). Keep that column in the dataset you pass; with "
            "`skip_prepare_dataset=True`, keep it beside `input_ids`."
        )
    dropped = rows_passed - len(prepared)
    if dropped > 0:
        logger.warning(
            f"Dataset preparation dropped {dropped} of {rows_passed:,} training rows (rows whose completion "
            f"was truncated away by `max_length={args.max_length}`, which would train on nothing). Raise "
            "`max_length` to keep them."
        )
    return dataset_levels(prepared, column)

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
Difficulty levels computed for datasets that have none (`PLRSConfig.curriculum_difficulty`).

Every training row gets a score, higher meaning harder: `"base_loss"`, the base model's mean loss on the row's
completion tokens (the tokens the curriculum trains on); `"length"`, the number of those tokens; or a user's
`row -> float`. The rows are then cut into `curriculum_num_levels` equal-size levels by score quantiles, level 1 the
easiest, ties broken by row index. The cut points ("thresholds", the highest score of each level but the last) bin
other rows, e.g. the evaluation rows, on the same scale.

>>> levels, thresholds = levels_from_scores([0.3, 0.1, 0.2, 0.1], num_levels=2)
>>> levels, thresholds
([2, 1, 2, 1], [0.1])
>>> bin_scores([0.05, 0.1, 0.15], thresholds)
[1, 1, 2]
"""

import contextlib
import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from datasets import Dataset
from tqdm.auto import tqdm

from .adapters import gathered_parameters
from .checkpointing import atomic_path, read_json, write_json_atomic
from .fingerprint import as_json, data_fingerprint
from .progress import bars_render


logger = get_logger(__name__)


DIFFICULTY_METHODS = ("base_loss", "length")
DIFFICULTY_CSV = "difficulty.csv"
# What the levels were computed from (method, data, model) and their thresholds, beside the CSV.
DIFFICULTY_JSON = "difficulty.json"
# Index of each training row in the dataset passed to the trainer, kept through dataset preparation.
DIFFICULTY_ROW_COLUMN = "curriculum_row"
IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------------------------
# Levels from scores: pure functions


def levels_from_scores(scores: Sequence[float], num_levels: int) -> tuple[list[int], list[float]]:
    """
    Split rows into `num_levels` levels of equal size (sizes differ by at most one) by ascending score; ties are
    broken by row index, so the result depends on nothing but `scores`. Returns the level (from 1) of each row and
    the thresholds: the highest score of each level but the last.
    """
    if num_levels < 1:
        raise ValueError(f"`num_levels` must be at least 1, but the value passed is {num_levels}.")
    if len(scores) < num_levels:
        raise ValueError(
            f"Cannot split {len(scores)} rows into {num_levels} difficulty levels: lower `curriculum_num_levels` to "
            f"at most {len(scores)}, or pass more rows."
        )
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        bad = np.flatnonzero(~np.isfinite(scores))[:5].tolist()
        raise ValueError(
            f"Difficulty scores must be finite numbers, but the rows {bad} scored {scores[bad].tolist()}."
        )
    order = np.lexsort((np.arange(len(scores)), scores))  # by score, then by row index
    levels = np.empty(len(scores), dtype=np.int64)
    chunks = np.array_split(order, num_levels)
    for level, chunk in enumerate(chunks, start=1):
        levels[chunk] = level
    thresholds = [float(scores[chunk[-1]]) for chunk in chunks[:-1]]
    return levels.tolist(), thresholds


def bin_scores(scores: Sequence[float], thresholds: Sequence[float]) -> list[int]:
    """The level (from 1) of each score on the scale of `thresholds`: level k holds scores in (t[k-2], t[k-1]]."""
    return (np.searchsorted(np.asarray(thresholds, dtype=np.float64), np.asarray(scores), side="left") + 1).tolist()


def spearman_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of `x` and `y` (average ranks for ties)."""

    def ranks(values):
        values = np.asarray(values, dtype=np.float64)
        order = np.argsort(values, kind="stable")
        ranked = np.empty(len(values))
        ranked[order] = np.arange(len(values))
        for value in np.unique(values):  # ties share their mean rank
            tied = values == value
            ranked[tied] = ranked[tied].mean()
        return ranked

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


# --------------------------------------------------------------------------------------------------------------------
# Scores of tokenized rows


def _labels(row: dict[str, Any]) -> list[int]:
    # TRL's prepared rows carry `labels` (-100 on the prompt with `completion_only_loss`); language-modeling rows
    # without them train on every token.
    return row["labels"] if row.get("labels") is not None else row["input_ids"]


def completion_lengths(dataset: Dataset) -> list[float]:
    """Number of trained tokens (labels other than -100) of every tokenized row."""
    column = "labels" if "labels" in dataset.column_names else "input_ids"
    return [float(sum(label != IGNORE_INDEX for label in labels)) for labels in dataset[column]]


@torch.no_grad()
def base_loss_scores(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int,
    pad_token_id: int,
    show_progress: bool = True,
    description: str = "Scoring difficulty",
) -> list[float]:
    """
    The mean per-token loss of `model` on the trained tokens (labels other than -100) of every tokenized row, as
    `model(input_ids, labels=labels).loss` gives it row by row. Batched by similar length (less padding), without
    gradients, in the model's dtype; a row with no trained token scores 0.
    """
    lengths = [len(ids) for ids in dataset["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    scores = np.zeros(len(dataset), dtype=np.float64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc=description, unit="batch", disable=not (show_progress and bars_render())):
            rows = dataset.select(batch.tolist())
            width = max(lengths[i] for i in batch)
            input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, row in enumerate(rows):
                length = len(row["input_ids"])
                input_ids[i, :length] = torch.tensor(row["input_ids"])
                labels[i, :length] = torch.tensor(_labels(row))
                attention_mask[i, :length] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            targets = labels[:, 1:].to(device)
            token_losses = F.cross_entropy(
                logits[:, :-1].transpose(1, 2).float(), targets, ignore_index=IGNORE_INDEX, reduction="none"
            )
            counts = (targets != IGNORE_INDEX).sum(dim=1)
            means = token_losses.sum(dim=1) / counts.clamp(min=1)
            scores[batch] = means.double().cpu().numpy()
    finally:
        model.train(was_training)
    return scores.tolist()


def callable_scores(score_fn: Callable[[dict], float], dataset: Dataset) -> list[float]:
    """`score_fn(row)` for every row."""
    return [float(score_fn(row)) for row in dataset]


def method_name(difficulty: str | Callable) -> str:
    """A stable name for a difficulty method: the string, or the callable's qualified name."""
    if isinstance(difficulty, str):
        return difficulty
    return f"{getattr(difficulty, '__module__', '')}.{getattr(difficulty, '__qualname__', type(difficulty).__name__)}"


def write_difficulty(
    output_dir: str,
    key: dict[str, Any],
    rows: Sequence[int],
    scores: Sequence[float],
    levels: Sequence[int],
    thresholds: Sequence[float],
) -> None:
    """
    Write `difficulty.csv` (`row,score,level`, one line per training row, `row` its index in the dataset passed to
    the trainer) and `difficulty.json` (`key`: what the levels were computed from, and the thresholds), atomically,
    the JSON last.
    """
    os.makedirs(output_dir, exist_ok=True)
    with atomic_path(os.path.join(output_dir, DIFFICULTY_CSV)) as tmp, open(tmp, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["row", "score", "level"])
        for row, score, level in zip(rows, scores, levels, strict=True):
            writer.writerow([row, repr(float(score)), level])
    write_json_atomic(os.path.join(output_dir, DIFFICULTY_JSON), {**key, "thresholds": list(thresholds)})


def read_difficulty(output_dir: str, key: dict[str, Any]) -> tuple[list[float], list[int], list[float]] | None:
    """
    The scores, levels and thresholds that [`write_difficulty`] left in `output_dir` for the same `key` (method,
    levels, data and model), or `None` when there are none or they were computed from something else.
    """
    json_path, csv_path = os.path.join(output_dir, DIFFICULTY_JSON), os.path.join(output_dir, DIFFICULTY_CSV)
    if not (os.path.isfile(json_path) and os.path.isfile(csv_path)):
        return None
    saved = read_json(json_path)
    if {name: saved.get(name) for name in key} != as_json(key):
        return None
    with open(csv_path, newline="") as file:
        lines = list(csv.DictReader(file))
    return [float(line["score"]) for line in lines], [int(line["level"]) for line in lines], saved["thresholds"]


# --------------------------------------------------------------------------------------------------------------------
# Levels of a trainer's prepared rows


@dataclass
class ComputedLevels:
    """
    What [`compute_levels`] gives the trainer: the level of every training row and of every evaluation row, and the
    record kept in the checkpoint fingerprint and `run_summary.json` (`method`, `num_levels`, `thresholds`).
    """

    train_levels: list[int]
    eval_levels: list[int] | None
    record: dict[str, Any]
    read_back: bool


def compute_levels(
    dataset: Dataset,
    eval_dataset: Dataset | None,
    difficulty: str | Callable,
    num_levels: int,
    output_dir: str,
    model_key: dict[str, str],
    score: Callable[[Dataset, str], list[float]],
    accelerator,
    should_save: bool,
) -> ComputedLevels:
    """
    Score every prepared training row with `score(rows, split)`, cut the rows into `num_levels` equal-size levels,
    write them to `output_dir/difficulty.csv` (if `should_save`) and bin the evaluation rows with the same thresholds.
    A `"base_loss"` run that finds the levels it would compute already in `output_dir` (same data, model and
    settings: a resume, or a rerun) reads them instead of scoring again: the `accelerator`'s main process decides for
    every process, so that all score, or none does.
    """
    method = method_name(difficulty)
    key = {
        "method": method,
        "num_levels": num_levels,
        "data_sha256": data_fingerprint(dataset),
        "model": model_key,
    }
    saved = None
    if difficulty == "base_loss":
        saved = read_difficulty(output_dir, key) if accelerator.is_main_process else None
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            saved = broadcast_object_list([saved])[0]
    if saved is not None:
        scores, levels, thresholds = saved
    else:
        scores = score(dataset, "train")
        levels, thresholds = levels_from_scores(scores, num_levels)
        if should_save:
            write_difficulty(output_dir, key, dataset[DIFFICULTY_ROW_COLUMN], scores, levels, thresholds)
    sizes = [levels.count(level) for level in range(1, num_levels + 1)]
    logger.info(
        f"{'Read the' if saved is not None else 'Computed'} difficulty levels by {method} "
        f"{'from' if saved is not None else 'and wrote them to'} {os.path.join(output_dir, DIFFICULTY_CSV)}: "
        f"{sizes} rows in levels 1-{num_levels} (thresholds {[round(t, 4) for t in thresholds]})."
    )
    eval_levels = bin_scores(score(eval_dataset, "eval"), thresholds) if isinstance(eval_dataset, Dataset) else None
    record = {"method": method, "num_levels": num_levels, "thresholds": thresholds}
    return ComputedLevels(levels, eval_levels, record, read_back=saved is not None)


def score_rows(
    dataset: Dataset,
    difficulty: str | Callable,
    model,
    accelerator,
    quantized: bool,
    batch_size: int,
    pad_token_id: int,
    show_progress: bool,
    description: str,
    main_process_only: bool = False,
) -> list[float]:
    """
    The `difficulty` score of every row of a prepared (tokenized) dataset. `"base_loss"` is split across the
    `accelerator`'s processes, each scoring its share with the base model (the adapter disabled), and gathered in
    order; with `main_process_only` (the other processes hold no weights yet, as under FSDP's
    `cpu_ram_efficient_loading`) the main process scores every row and sends the scores to the others.
    """
    if difficulty == "length":
        return completion_lengths(dataset)
    if callable(difficulty):
        return callable_scores(difficulty, dataset)
    from accelerate.utils import broadcast_object_list, gather_object

    if main_process_only and accelerator.num_processes > 1:
        scores = [None]
        if accelerator.is_main_process:
            with scoring_model(model, accelerator.device, quantized) as base:
                scores = [
                    base_loss_scores(
                        base,
                        dataset,
                        batch_size=batch_size,
                        pad_token_id=pad_token_id,
                        show_progress=show_progress,
                        description=description,
                    )
                ]
        return broadcast_object_list(scores)[0]
    with accelerator.split_between_processes(list(range(len(dataset)))) as shard:
        with scoring_model(model, accelerator.device, quantized) as base:
            scores = base_loss_scores(
                base,
                dataset.select(shard),
                batch_size=batch_size,
                pad_token_id=pad_token_id,
                show_progress=show_progress,
                description=description,
            )
    return gather_object(scores) if accelerator.num_processes > 1 else scores


@contextlib.contextmanager
def scoring_model(model, device: torch.device, quantized: bool):
    """
    The base model, as it computes the difficulty scores: the adapter disabled; under ZeRO-3 with partitioned weights
    (`zero.Init`), gathered whole on every process; on the accelerator when DeepSpeed left it on the CPU.
    """
    params = list(model.parameters())
    partitioned = any(hasattr(param, "ds_id") for param in params)
    if not partitioned and not quantized and params and params[0].device.type == "cpu" and device.type != "cpu":
        model.to(device)
    disabled = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    with gathered_parameters(params, modify=False), disabled:
        yield model

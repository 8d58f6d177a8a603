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
The forgetting matrix of a curriculum (a metric per evaluated level after every stage), the transfer metrics derived
from it (pure functions), and its files.

The forgetting matrix `R` has one row per evaluation point (optionally "before training", then "after stage k") and
one column per level `j`; `R[k, j]` is the eval loss or the exact match on level `j` after stage `k`. With `K` the
last stage evaluated and `s(j)` the stage that first trains level `j`:

- average final: `mean_j R[K, j]`;
- backward transfer: `BWT = mean_{j: s(j) < K} (R[K, j] - R[s(j), j])` (negative: earlier levels were forgotten);
- forgetting of level `j`: `F_j = max_{k < K} R[k, j] - R[K, j]` for `s(j) < K` (positive: forgotten);
- forward transfer: `FWT = mean_{j: s(j) > 0} (R[s(j) - 1, j] - R[before, j])` (needs the "before training" row).

For a loss (lower is better) every difference is negated, so that positive still means "better" for transfer and
"worse" for forgetting.

>>> from trl_plrs.forgetting import backward_transfer
>>> backward_transfer([[0.8, 0.1], [0.6, 0.9]], trained_at=[0, 1])
-0.2
"""

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .checkpointing import atomic_path, read_json, write_json_atomic
from .plotting import plot_forgetting_heatmap


FORGETTING_MATRIX_JSON = "forgetting_matrix.json"
FORGETTING_MATRIX_CSV = "forgetting_matrix.csv"
FORGETTING_HEATMAP_PNG = "forgetting_heatmap.png"
BEFORE_TRAINING = "before"
# Metrics of the matrix, and whether higher values are better.
MATRIX_METRICS = {"loss": False, "exact_match": True}


# --------------------------------------------------------------------------------------------------------------------
# Derived metrics: pure functions over a matrix given as a list of rows (one per finished stage, in order, indexed
# from 0), one value per level


def _sign(higher_is_better: bool) -> int:
    return 1 if higher_is_better else -1


def _mean(values: list[float]) -> float | None:
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


def average_final(matrix: Sequence[Sequence[float | None]]) -> float | None:
    """Mean over levels of the last row: the average final accuracy (or loss). `None` for an empty matrix."""
    return _mean(list(matrix[-1])) if matrix else None


def backward_transfer(
    matrix: Sequence[Sequence[float | None]], trained_at: Sequence[int | None], higher_is_better: bool = True
) -> float | None:
    """
    `BWT = mean_{j: s(j) < K} (R[K, j] - R[s(j), j])`, with `K` the last row and `s(j) = trained_at[j]` the row of the
    stage that first trained level `j` (`None`: never trained, left out). Negative means forgetting. For a loss
    (`higher_is_better=False`) the difference is negated. `None` when no level was trained before the last stage.
    """
    last = len(matrix) - 1
    differences = [
        _sign(higher_is_better) * (matrix[last][j] - matrix[stage][j])
        for j, stage in enumerate(trained_at)
        if stage is not None and stage < last and matrix[last][j] is not None and matrix[stage][j] is not None
    ]
    return _mean(differences)


def forgetting_per_level(
    matrix: Sequence[Sequence[float | None]], trained_at: Sequence[int | None], higher_is_better: bool = True
) -> list[float | None]:
    """
    `F_j = max_{k < K} R[k, j] - R[K, j]` for each level trained before the last row `K` (`None` for the others).
    Positive means forgotten. For a loss (`higher_is_better=False`) it is `R[K, j] - min_{k < K} R[k, j]`.
    """
    last = len(matrix) - 1
    sign = _sign(higher_is_better)
    forgetting = []
    for j, stage in enumerate(trained_at):
        earlier = [sign * matrix[k][j] for k in range(last) if matrix[k][j] is not None]
        if stage is None or stage >= last or not earlier or matrix[last][j] is None:
            forgetting.append(None)
        else:
            forgetting.append(max(earlier) - sign * matrix[last][j])
    return forgetting


def forward_transfer(
    matrix: Sequence[Sequence[float | None]],
    trained_at: Sequence[int | None],
    before: Sequence[float | None] | None,
    higher_is_better: bool = True,
) -> float | None:
    """
    `FWT = mean_{j: 0 < s(j) <= K} (R[s(j) - 1, j] - before[j])`: how much training the earlier stages helped a level
    before its own stage, relative to the model before any training. `None` without a `before` row.
    """
    if before is None:
        return None
    differences = [
        _sign(higher_is_better) * (matrix[stage - 1][j] - before[j])
        for j, stage in enumerate(trained_at)
        if stage is not None and 0 < stage < len(matrix) and matrix[stage - 1][j] is not None and before[j] is not None
    ]
    return _mean(differences)


def transfer_summary(
    matrix: Sequence[Sequence[float | None]],
    trained_at: Sequence[int | None],
    before: Sequence[float | None] | None = None,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """Every derived metric of one matrix: `average_final`, `backward_transfer`, `forward_transfer`, `forgetting`."""
    if not matrix:
        return {"average_final": None, "backward_transfer": None, "forward_transfer": None, "forgetting": []}
    return {
        "average_final": average_final(matrix),
        "backward_transfer": backward_transfer(matrix, trained_at, higher_is_better),
        "forward_transfer": forward_transfer(matrix, trained_at, before, higher_is_better),
        "forgetting": forgetting_per_level(matrix, trained_at, higher_is_better),
    }


# --------------------------------------------------------------------------------------------------------------------
# The matrix, its files and its heatmap


@dataclass
class ForgettingMatrix:
    """
    Per-level metrics after every stage.

    Args:
        levels (`list[int]`): Columns: the levels of the evaluation data, ascending.
        stage_levels (`list[list[int]]`): Levels trained at each stage of the curriculum.
        before (`dict[str, list]`): Metric -> value per level before training (empty if not evaluated).
        after_stage (`dict[int, dict[str, list]]`): Stage number (from 1) -> metric -> value per level, for the
            finished stages.
    """

    levels: list[int]
    stage_levels: list[list[int]]
    before: dict[str, list[float | None]] = field(default_factory=dict)
    after_stage: dict[int, dict[str, list[float | None]]] = field(default_factory=dict)

    @property
    def trained_at(self) -> list[int | None]:
        """For each level, the number (from 1) of the first stage that trains it (`None` if no stage does)."""
        first = {}
        for index, levels in enumerate(self.stage_levels, start=1):
            for level in levels:
                first.setdefault(level, index)
        return [first.get(level) for level in self.levels]

    @staticmethod
    def higher_is_better(metric: str) -> bool:
        """Whether a higher value of `metric` is better (exact match) or worse (loss)."""
        return MATRIX_METRICS[metric]

    def metrics(self) -> list[str]:
        names = {name for row in [self.before, *self.after_stage.values()] for name in row}
        return [name for name in MATRIX_METRICS if name in names]

    def rows(self, metric: str) -> list[list[float | None]]:
        """The matrix of `metric`: one row per finished stage (1, 2, ...), one column per level."""
        return [self.after_stage[stage].get(metric, [None] * len(self.levels)) for stage in sorted(self.after_stage)]

    def summary(self) -> dict[str, dict[str, Any]]:
        """[`transfer_summary`] of each metric, over the finished stages."""
        summary = {}
        # The pure functions index rows from 0; stage k is row k - 1.
        trained_at_row = [None if stage is None else stage - 1 for stage in self.trained_at]
        for metric in self.metrics():
            rows = self.rows(metric)
            summary[metric] = transfer_summary(
                rows, trained_at_row, self.before.get(metric), higher_is_better=MATRIX_METRICS[metric]
            )
        return summary

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": self.levels,
            "stage_levels": self.stage_levels,
            "trained_at": self.trained_at,
            "before": self.before,
            "after_stage": {str(stage): self.after_stage[stage] for stage in sorted(self.after_stage)},
            "summary": self.summary(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ForgettingMatrix":
        return cls(
            levels=list(data["levels"]),
            stage_levels=[list(levels) for levels in data["stage_levels"]],
            before=dict(data.get("before", {})),
            after_stage={int(stage): row for stage, row in data.get("after_stage", {}).items()},
        )

    def csv_rows(self) -> list[dict[str, Any]]:
        """Wide rows: `metric, after` (`before` or the stage number), then one `level_<j>` column per level."""
        rows = []
        for metric in self.metrics():
            points = ([(BEFORE_TRAINING, self.before[metric])] if metric in self.before else []) + [
                (str(stage), self.after_stage[stage][metric])
                for stage in sorted(self.after_stage)
                if metric in self.after_stage[stage]
            ]
            for after, values in points:
                rows.append(
                    {"metric": metric, "after": after, **{f"level_{j}": v for j, v in zip(self.levels, values)}}
                )
        return rows


def save_forgetting_matrix(matrix: ForgettingMatrix, output_dir: str) -> dict[str, str]:
    """
    Write `forgetting_matrix.json` (values, derived metrics) and `forgetting_matrix.csv` to `output_dir`, each
    atomically, and the heatmap `forgetting_heatmap.png` if matplotlib is installed. Returns the paths written.
    """
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        "json": os.path.join(output_dir, FORGETTING_MATRIX_JSON),
        "csv": os.path.join(output_dir, FORGETTING_MATRIX_CSV),
    }
    write_json_atomic(paths["json"], matrix.to_dict())
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["metric", "after", *[f"level_{j}" for j in matrix.levels]])
        writer.writeheader()
        writer.writerows(matrix.csv_rows())
    png = plot_forgetting_heatmap(matrix, os.path.join(output_dir, FORGETTING_HEATMAP_PNG))
    if png is not None:
        paths["png"] = png
    return paths


def load_forgetting_matrix(path: str) -> ForgettingMatrix:
    """Read a `forgetting_matrix.json` written by [`save_forgetting_matrix`] (a file or its folder)."""
    if os.path.isdir(path):
        path = os.path.join(path, FORGETTING_MATRIX_JSON)
    return ForgettingMatrix.from_dict(read_json(path))

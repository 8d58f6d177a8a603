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
"""The forgetting matrix as a heatmap PNG (matplotlib, imported when a plot is drawn: `pip install trl_plrs[plot]`)."""

import logging
import math

from .checkpointing import atomic_path


logger = logging.getLogger(__name__)

# Key of the before-training row among the plotted rows (the others are keyed by stage number).
_BEFORE = "before"


def plot_forgetting_heatmap(matrix, path: str, title: str | None = None) -> str | None:
    """
    Draw a [`~trl_plrs.forgetting.ForgettingMatrix`] as a heatmap PNG, one panel per metric (rows: before training, after stage k; columns: levels;
    the level trained at a stage is outlined). Needs matplotlib (`pip install trl_plrs[plot]`); without it, logs
    that the plot is skipped and returns `None`.
    """
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure state is touched
    except ImportError:
        logger.info("matplotlib is not installed: skipping the forgetting heatmap (`pip install trl_plrs[plot]`).")
        return None
    metrics = matrix.metrics()
    if not metrics:
        return None
    labels = ([("before training", _BEFORE)] if matrix.before else []) + [
        (f"after stage {stage} (L{','.join(map(str, matrix.stage_levels[stage - 1]))})", stage)
        for stage in sorted(matrix.after_stage)
    ]
    figure = Figure(figsize=(1.1 * len(matrix.levels) * len(metrics) + 2.8 * len(metrics), 0.55 * len(labels) + 1.6))
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for axis, metric in zip(axes, metrics):
        nan = [math.nan] * len(matrix.levels)
        values = [
            [
                math.nan if v is None else v
                for v in (matrix.before if key == _BEFORE else matrix.after_stage[key]).get(metric, nan)
            ]
            for _, key in labels
        ]
        higher_is_better = matrix.higher_is_better(metric)
        if higher_is_better:  # accuracies are shown in %
            values = [[100 * value for value in row] for row in values]
        finite = [v for row in values for v in row if not math.isnan(v)]
        vmin, vmax = (0.0, 100.0) if higher_is_better else (min(finite, default=0.0), max(finite, default=1.0))
        image = axis.imshow(
            values, cmap="viridis" if higher_is_better else "viridis_r", vmin=vmin, vmax=vmax, aspect="auto"
        )
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                if not math.isnan(value):
                    text = f"{value:.0f}" if higher_is_better else f"{value:.2f}"
                    shade = (value - vmin) / (vmax - vmin) if vmax > vmin else 0.5
                    dark = shade < 0.5 if higher_is_better else shade > 0.5
                    axis.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
        trained_at = matrix.trained_at
        for i, (_, key) in enumerate(labels):
            for j, stage in enumerate(trained_at):
                if key != _BEFORE and stage == key:
                    axis.add_patch(_outline(j, i))
        axis.set_xticks(range(len(matrix.levels)), [f"L{j}" for j in matrix.levels])
        axis.set_yticks(range(len(labels)), [label for label, _ in labels] if axis is axes[0] else [""] * len(labels))
        axis.set_xlabel("evaluated level")
        axis.set_title("exact match (%)" if metric == "exact_match" else "eval loss (lower is better)", fontsize=10)
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    return path


def _outline(column: int, row: int):
    from matplotlib.patches import Rectangle

    return Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5)

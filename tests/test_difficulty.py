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
"""Difficulty levels computed for data without levels (`curriculum_difficulty`): the pure level cuts, the scores
against an independent computation, the trainer's CSV, thresholds, evaluation binning, determinism and bad values.
The 2-process scoring is in `tests/test_distributed.py`."""

import csv
import logging

import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_plrs import CurriculumSFTTrainer, PLRSConfig
from trl_plrs import difficulty as difficulty_module
from trl_plrs.difficulty import (
    DIFFICULTY_CSV,
    base_loss_scores,
    bin_scores,
    completion_lengths,
    levels_from_scores,
    spearman_correlation,
)
from trl_plrs.testing import build_tiny_model

from .test_plrs_trainer import lora_config, make_args


# --------------------------------------------------------------------------------------------------------------------
# Levels from scores


def test_levels_are_equal_size_monotone_and_break_ties_by_row():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=103).astype(float).tolist()  # many ties
    levels, thresholds = levels_from_scores(scores, num_levels=5)
    sizes = [levels.count(level) for level in range(1, 6)]
    assert sizes == [21, 21, 21, 20, 20]  # equal up to one row
    # Monotone: a harder level never holds a lower score; equal scores go by row index.
    order = sorted(range(103), key=lambda row: (scores[row], row))
    assert [levels[row] for row in order] == sorted(levels)
    assert thresholds == [max(score for score, level in zip(scores, levels) if level == k) for k in range(1, 5)]
    assert levels_from_scores(scores, 5) == (levels, thresholds)  # a function of the scores alone


def test_binning_reproduces_the_levels_of_distinct_scores_and_extends_them():
    scores = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2]
    levels, thresholds = levels_from_scores(scores, num_levels=3)
    assert levels == [2, 1, 3, 2, 3, 1]
    assert bin_scores(scores, thresholds) == levels
    assert bin_scores([-1.0, 0.2, 0.25, 0.5, 0.51, 99.0], thresholds) == [1, 1, 2, 2, 3, 3]


def test_bad_level_cuts_raise():
    with pytest.raises(ValueError, match="Cannot split 2 rows into 3 difficulty levels"):
        levels_from_scores([0.1, 0.2], 3)
    with pytest.raises(ValueError, match="must be finite numbers, but the rows \\[1\\]"):
        levels_from_scores([0.1, float("nan"), 0.3], 2)


def test_spearman_correlation():
    assert spearman_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman_correlation([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(
        np.corrcoef([1.5, 1.5, 3.5, 3.5], [1, 2, 3, 4])[0, 1]
    )


# --------------------------------------------------------------------------------------------------------------------
# Scores against an independent computation


def unleveled_dataset(rows: int = 30) -> Dataset:
    """Prompt/completion rows without a level column, of varied completion lengths and contents."""
    words = ["alpha", "beta", "gamma", "delta", "three", "seven", "plus", "minus"]
    rng = np.random.default_rng(1)
    return Dataset.from_list(
        [
            {
                "prompt": f"question {i}: {' '.join(rng.choice(words, size=2))}",
                "completion": " " + " ".join(rng.choice(words, size=1 + i % 9)),
            }
            for i in range(rows)
        ]
    )


def build_trainer(tmp_path, tokenizer, dataset=None, eval_dataset=None, **kwargs):
    args = make_args(tmp_path, **{"curriculum_difficulty": "base_loss", "curriculum_num_levels": 3, **kwargs})
    return CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=args,
        train_dataset=unleveled_dataset() if dataset is None else dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
    )


def per_row_loss(model, row) -> float:
    """`model(input_ids, labels=labels).loss` of one row, alone: no padding, no batching."""
    with torch.no_grad():
        output = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
    return output.loss.item()


def test_base_loss_scores_equal_the_loss_of_each_row_alone(tmp_path, tokenizer):
    trainer = build_trainer(tmp_path, tokenizer)
    rows = trainer.curriculum_dataset
    model = trainer.model.get_base_model()
    expected = [per_row_loss(model, row) for row in rows]
    # Batched by length with padding, in the trainer (adapter disabled) and directly.
    scored = base_loss_scores(model, rows, batch_size=7, pad_token_id=tokenizer.pad_token_id, show_progress=False)
    assert scored == pytest.approx(expected, abs=1e-5)
    with open(tmp_path / DIFFICULTY_CSV, newline="") as file:
        csv_rows = list(csv.DictReader(file))
    assert [float(row["score"]) for row in csv_rows] == pytest.approx(expected, abs=1e-5)
    # The levels: equal size, monotone in score, in the level column the stages select by.
    levels = [int(row["level"]) for row in csv_rows]
    assert [levels.count(level) for level in (1, 2, 3)] == [10, 10, 10]
    assert trainer.row_levels == levels == rows["level"]
    scores = [float(row["score"]) for row in csv_rows]
    for low, high in zip(range(1, 3), range(2, 4)):
        assert max(s for s, lv in zip(scores, levels) if lv == low) <= min(
            s for s, lv in zip(scores, levels) if lv == high
        )
    assert [row["row"] for row in csv_rows] == [str(i) for i in range(30)]
    assert trainer.difficulty["thresholds"] == levels_from_scores(scores, 3)[1]
    assert trainer.curriculum_fingerprint()["difficulty"]["thresholds"] == trainer.difficulty["thresholds"]


def test_length_counts_the_trained_tokens(tmp_path, tokenizer):
    trainer = build_trainer(tmp_path, tokenizer, curriculum_difficulty="length")
    rows = trainer.curriculum_dataset
    assert completion_lengths(rows) == [float(sum(label != -100 for label in row["labels"])) for row in rows]
    assert trainer.difficulty["method"] == "length"


def test_callable_scores_and_rows_dropped_by_preparation_keep_their_index(tmp_path, tokenizer):
    dataset = unleveled_dataset()
    # Row 4's completion is truncated away by `max_length` and dropped: the CSV still names rows by their index in the
    # dataset passed.
    dataset = Dataset.from_list(
        [{**row, "prompt": row["prompt"] + " x" * 80} if i == 4 else row for i, row in enumerate(dataset)]
    )
    trainer = build_trainer(
        tmp_path, tokenizer, dataset=dataset, curriculum_difficulty=lambda row: len(row["prompt"]), max_length=48
    )
    with open(tmp_path / DIFFICULTY_CSV, newline="") as file:
        csv_rows = list(csv.DictReader(file))
    assert [int(row["row"]) for row in csv_rows] == [i for i in range(30) if i != 4]
    assert [float(row["score"]) for row in csv_rows] == [len(dataset[int(row["row"])]["prompt"]) for row in csv_rows]
    assert trainer.difficulty["method"].endswith("<lambda>")


def test_difficulty_is_deterministic_and_read_back_without_scoring(tmp_path, tokenizer, monkeypatch):
    first = build_trainer(tmp_path / "a", tokenizer)
    second = build_trainer(tmp_path / "b", tokenizer)
    assert (tmp_path / "a" / DIFFICULTY_CSV).read_text() == (tmp_path / "b" / DIFFICULTY_CSV).read_text()
    assert first.curriculum_fingerprint() == second.curriculum_fingerprint()

    # A rerun (or a resume) in the same output_dir with the same data and model reads the levels back.
    def no_scoring(*args, **kwargs):
        raise AssertionError("scored again")

    monkeypatch.setattr(difficulty_module, "base_loss_scores", no_scoring)
    again = build_trainer(tmp_path / "a", tokenizer)
    assert again.row_levels == first.row_levels and again.difficulty == first.difficulty
    # Other data in that folder is scored anew (and would fail here).
    with pytest.raises(AssertionError, match="scored again"):
        build_trainer(tmp_path / "a", tokenizer, dataset=unleveled_dataset(33))


def test_eval_rows_are_binned_with_the_training_thresholds(tmp_path, tokenizer):
    eval_dataset = unleveled_dataset(12)
    trainer = build_trainer(tmp_path, tokenizer, eval_dataset=eval_dataset)
    model = trainer.model.get_base_model()
    expected = bin_scores([per_row_loss(model, row) for row in trainer.eval_dataset], trainer.difficulty["thresholds"])
    assert trainer.eval_dataset["level"] == expected
    # So the per-level evaluation and the forgetting matrix work on computed levels.
    assert trainer.stage_evaluation is not None
    assert trainer.stage_evaluation.levels == sorted(set(expected))


def test_a_level_column_is_overridden_by_the_computed_levels_with_a_warning(tmp_path, tokenizer, caplog):
    dataset = unleveled_dataset().add_column("level", [1] * 30)
    with caplog.at_level(logging.WARNING):
        trainer = build_trainer(tmp_path, tokenizer, dataset=dataset)
    assert "the computed levels win and the column is not used" in caplog.text
    assert sorted(set(trainer.row_levels)) == [1, 2, 3]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"curriculum_difficulty": "loss"}, "`curriculum_difficulty` must be one of \\['base_loss', 'length'\\]"),
        (
            {"curriculum_difficulty": "length", "curriculum_num_levels": 0},
            "`curriculum_num_levels` must be a positive",
        ),
        (
            {"curriculum_difficulty": "length", "curriculum_num_levels": 2.5},
            "`curriculum_num_levels` must be a positive",
        ),
    ],
)
def test_bad_config_values_raise(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        PLRSConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)


def test_more_levels_than_rows_raises_at_construction(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="Cannot split 30 rows into 40 difficulty levels"):
        build_trainer(tmp_path, tokenizer, curriculum_num_levels=40, lora_ranks=[4])


def test_curriculum_trains_on_computed_levels(tmp_path, tokenizer):
    trainer = build_trainer(tmp_path, tokenizer, max_steps=1)
    trainer.train()
    assert [summary.levels for summary in trainer.stage_summaries] == [[1], [2], [3]]
    # Full replay by default: each stage adds its 10 rows.
    assert [summary.rows for summary in trainer.stage_summaries] == [10, 20, 30]


def test_base_loss_on_a_bf16_base_is_scored_in_bf16(tmp_path, tokenizer):
    # Where users live: a bf16 base. The scores are its own losses (in its dtype), and the curriculum trains.
    args = make_args(tmp_path, curriculum_difficulty="base_loss", curriculum_num_levels=3, max_steps=1, bf16=True)
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer, dtype=torch.bfloat16),
        args=args,
        train_dataset=unleveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    model = trainer.model.get_base_model()
    with open(tmp_path / DIFFICULTY_CSV, newline="") as file:
        scores = [float(row["score"]) for row in csv.DictReader(file)]
    expected = [per_row_loss(model, row) for row in trainer.curriculum_dataset]
    assert scores == pytest.approx(expected, rel=2e-2)
    trainer.train()
    assert [summary.levels for summary in trainer.stage_summaries] == [[1], [2], [3]]

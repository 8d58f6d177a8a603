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
"""What a user sees (`trl_plrs.progress`): labelled bars, readable log lines, one line per stage transition."""

import os
import re
from types import SimpleNamespace

import pytest
from datasets import IterableDataset

import trl_plrs.progress
from trl_plrs import CurriculumSFTTrainer
from trl_plrs.math.data import make_synthetic_math, to_prompt_completion
from trl_plrs.progress import bars_render, format_log_line
from trl_plrs.testing import build_tiny_model

from .conftest import make_leveled_dataset
from .test_plrs_trainer import lora_config, make_args


def test_log_line_groups_levels_and_leads_with_the_stage():
    line = format_log_line(
        {"eval_level_1/loss": 0.5, "eval_level_2/loss": 1.25, "stage": 2, "lora_rank": 8, "epoch": 3.0, "x": "y"}, 3
    )
    assert line == "stage 2/3 (r=8), epoch 3 | x y | loss by level: 1 0.5, 2 1.25"
    assert format_log_line({"train_loss": 0.25}, 3) == "curriculum | train_loss 0.25"


@pytest.fixture
def terminal(monkeypatch):
    """Bars drawn as in a terminal: `bars_render` sees a stderr that is one (pytest's capture is not)."""
    monkeypatch.setattr(trl_plrs.progress, "sys", SimpleNamespace(stderr=SimpleNamespace(isatty=lambda: True)))


def test_progress_output_is_labelled_and_numbered_from_one(tmp_path, tokenizer, capsys, terminal):
    # MATH-like rows (problem, answer) of levels 1-3, so that the exact match per level can be generated.
    eval_dataset = make_synthetic_math(2, levels=(1, 2, 3), seed=1).map(to_prompt_completion)
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, disable_tqdm=False, stage_eval_generate=True, stage_eval_max_new_tokens=2),
        train_dataset=make_leveled_dataset(),
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    trainer.train()
    captured = capsys.readouterr()
    out, bars = captured.out, captured.err.replace("\r", "\n")

    # One line per stage transition, numbered from 1 like the folders it names.
    for number in (1, 2, 3):
        assert f"Stage {number}/3 done: levels {number} " in out
        assert f"adapter saved to {tmp_path / f'stage-{number}'}" in out
        assert os.path.isdir(tmp_path / f"stage-{number}")
    assert not os.path.exists(tmp_path / "stage-0")
    assert "Curriculum done (3 stages)" in out
    # Log lines lead with the stage instead of printing raw dicts.
    assert "stage 1/3 (r=16)" in out and "loss by level: 1 " in out and "{'loss'" not in out
    # Every bar has a label: the stage's, or the evaluation's.
    for label in ("Stage 1/3 (levels 1, r=16)", "Eval after stage 3/3: loss of levels 1-3"):
        assert label in bars
    assert "Eval after stage 2/3: exact match of levels 1-3" in bars
    unlabelled = [line for line in bars.splitlines() if re.match(r"^\s*\d+%\|", line)]
    assert unlabelled == []


def test_a_streamed_eval_set_evaluates_with_bars_on(tmp_path, tokenizer, capsys, terminal):
    """An iterable eval set has no `len()`: the evaluation bar counts without a total (it once raised TypeError)."""
    rows = make_leveled_dataset(rows_per_level=2).remove_columns("level")
    streamed = IterableDataset.from_generator(lambda: iter(rows.to_list()))
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, disable_tqdm=False, per_device_eval_batch_size=2),
        train_dataset=make_leveled_dataset(),
        eval_dataset=streamed,
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0
    assert "Evaluating" in capsys.readouterr().err


def test_a_log_file_gets_the_lines_without_the_bars(tmp_path, tokenizer, capsys):
    """Written to a file (stderr is not a terminal), the curriculum's bars are off; every line stays."""
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, disable_tqdm=False),
        train_dataset=make_leveled_dataset(),
        eval_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    trainer.train()
    captured = capsys.readouterr()
    assert not bars_render()
    for label in ("Stage 1/3 (levels 1", "Eval after stage", "Evaluating", "\x1b[A"):
        assert label not in captured.err
    assert "Stage 3/3 done" in captured.out and "loss by level: 1 " in captured.out

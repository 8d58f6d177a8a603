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

import pytest

from trl_plrs.math.evaluation import PREDICTION_COLUMNS
from trl_plrs.math.transitions import answer_transitions, main, transitions_to_markdown


def write_predictions(path, correct: dict[str, bool], symbolic: dict[str, bool] | None = None):
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=PREDICTION_COLUMNS)
        writer.writeheader()
        for uid, is_correct in correct.items():
            level = uid.split("-")[0]
            writer.writerow(
                {
                    "unique_id": uid,
                    "level": f"Level {level}",
                    "type": "Algebra",
                    "problem": "p",
                    "gold": "1",
                    "completion": "c",
                    "prediction": "1" if is_correct else "2",
                    "correct_strict": is_correct,
                    "correct_symbolic": (symbolic or correct)[uid],
                }
            )
    return str(path)


def counts(count, kept=0, lost=0, recovered=0, newly_solved=0, still_wrong=0):
    return dict(
        count=count, kept=kept, lost=lost, recovered=recovered, newly_solved=newly_solved, still_wrong=still_wrong
    )


def test_two_runs(tmp_path):
    a = write_predictions(tmp_path / "a.csv", {"1-a": True, "1-b": True, "1-c": False, "2-a": False, "2-b": False})
    b = write_predictions(tmp_path / "b.csv", {"1-a": True, "1-b": False, "1-c": True, "2-a": False, "2-b": True})
    (report,) = answer_transitions([a, b])
    assert report["per_level"] == {
        "1": counts(3, kept=1, lost=1, newly_solved=1),
        "2": counts(2, newly_solved=1, still_wrong=1),
    }
    assert report["overall"] == counts(5, kept=1, lost=1, newly_solved=2, still_wrong=1)
    assert report["unmatched"] == 0


def test_recovered_needs_an_earlier_success_and_unmatched_rows_are_not_counted(tmp_path):
    stage1 = write_predictions(tmp_path / "s1.csv", {"1-a": True, "1-b": False, "3-x": True})
    stage2 = write_predictions(tmp_path / "s2.csv", {"1-a": False, "1-b": False})
    stage3 = write_predictions(tmp_path / "s3.csv", {"1-a": True, "1-b": True})
    first, second = answer_transitions([stage1, stage2, stage3])
    assert first["overall"] == counts(2, lost=1, still_wrong=1)
    assert first["unmatched"] == 1  # "3-x" is only in the first CSV
    assert second["per_level"]["1"] == counts(2, recovered=1, newly_solved=1)  # 1-a had been solved at stage 1
    markdown = transitions_to_markdown([first, second])
    assert "| Level 1 | 2 | 0 | 0 | 1 | 1 | 0 |" in markdown
    assert "1 problems are in only one of the two CSVs" in markdown


def test_mode_selects_the_graded_column(tmp_path):
    a = write_predictions(tmp_path / "a.csv", {"1-a": False}, symbolic={"1-a": False})
    b = write_predictions(tmp_path / "b.csv", {"1-a": False}, symbolic={"1-a": True})
    assert answer_transitions([a, b], mode="strict")[0]["overall"]["still_wrong"] == 1
    assert answer_transitions([a, b], mode="symbolic")[0]["overall"]["newly_solved"] == 1


def test_errors(tmp_path):
    a = write_predictions(tmp_path / "a.csv", {"1-a": True})
    with pytest.raises(ValueError, match="at least two CSVs"):
        answer_transitions([a])
    with pytest.raises(ValueError, match="`mode` must be one of"):
        answer_transitions([a, a], mode="loose")
    with pytest.raises(ValueError, match="does not exist"):
        answer_transitions([a, str(tmp_path / "missing.csv")])
    (tmp_path / "bad.csv").write_text("id,ok\n1,True\n")
    with pytest.raises(ValueError, match="must have `unique_id` and `correct_strict` columns"):
        answer_transitions([a, str(tmp_path / "bad.csv")])


def test_command_line(tmp_path, capsys):
    a = write_predictions(tmp_path / "a.csv", {"1-a": True})
    b = write_predictions(tmp_path / "b.csv", {"1-a": False})
    main([a, b])
    assert "| **overall** | 1 | 0 | 1 | 0 | 0 | 0 |" in capsys.readouterr().out

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

import json
import logging
import os
import re
import statistics
from collections import Counter

import pytest
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from trl_plrs.data import split_train_validation
from trl_plrs.math.data import (
    SYSTEM_PROMPT,
    load_math,
    make_synthetic_math,
    math_corpus,
    standardize_math,
    to_prompt_completion,
)
from trl_plrs.math.grading import extract_boxed_answer
from trl_plrs.testing import build_tiny_model, build_tokenizer


# A few MATH-shaped rows written for these tests (the real data is never copied into the repository).
RAW_ROWS = [
    {"problem": "What is $2+3$?", "solution": "We add: $2+3=\\boxed{5}$.", "level": "Level 1", "type": "Prealgebra"},
    {
        "problem": "Simplify $\\frac{2}{4}$.",
        "solution": "First $\\boxed{2}$? No: $\\frac{2}{4} = \\boxed{\\frac{1}{2}}$.",
        "level": "Level 2",
        "type": "Algebra",
    },
    {"problem": "Find $x$.", "solution": "So $x = \\boxed 9$.", "level": "Level ?", "type": "Geometry"},
    {"problem": "Compute $3 \\cdot 4$.", "solution": "$\\boxed{12}$", "level": "Level 5", "type": "Algebra"},
]


def _write_release_folder(root):
    for index, row in enumerate(RAW_ROWS):
        subject = row["type"].lower()
        folder = os.path.join(root, "test", subject)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{index}.json"), "w") as file:
            json.dump(row, file)


class TestLoadMath:
    def test_jsonl_file(self, tmp_path, caplog):
        path = tmp_path / "test.jsonl"
        path.write_text("\n".join(json.dumps(row) for row in RAW_ROWS) + "\n")
        with caplog.at_level(logging.INFO, logger="trl_plrs.math.data"):
            dataset = load_math(str(path))
        assert dataset.column_names == ["problem", "solution", "answer", "level", "type"]
        assert dataset["level"] == [1, 2, 5]
        assert dataset["answer"] == ["5", "\\frac{1}{2}", "12"]
        assert "Dropped 1 rows" in caplog.text

    def test_json_file_keeps_given_answers_and_unique_ids(self, tmp_path):
        rows = [dict(row, answer="given", unique_id=f"test/x/{i}.json") for i, row in enumerate(RAW_ROWS[:2])]
        path = tmp_path / "test.json"
        path.write_text(json.dumps(rows))
        dataset = load_math(str(path))
        assert dataset.column_names == ["problem", "solution", "answer", "level", "type", "unique_id"]
        assert dataset["answer"] == ["given", "given"]
        assert dataset["unique_id"] == ["test/x/0.json", "test/x/1.json"]

    def test_release_folder(self, tmp_path):
        _write_release_folder(tmp_path)
        dataset = load_math(str(tmp_path), split="test")
        assert sorted(dataset["unique_id"]) == ["test/algebra/1.json", "test/algebra/3.json", "test/prealgebra/0.json"]
        assert sorted(dataset["level"]) == [1, 2, 5]
        # the split folder itself can be passed too
        same = load_math(str(tmp_path / "test"))
        assert sorted(same["unique_id"]) == sorted(dataset["unique_id"])

    def test_empty_folder_raises(self, tmp_path):
        with pytest.raises(ValueError, match="holds no `.json` files"):
            load_math(str(tmp_path))

    def test_unknown_levels_raise_when_not_dropped(self):
        with pytest.raises(ValueError, match="1 rows have a level that does not parse.*drop_unknown_levels=True"):
            standardize_math(Dataset.from_list(RAW_ROWS), drop_unknown_levels=False)

    def test_missing_columns_raise(self):
        with pytest.raises(ValueError, match="missing"):
            standardize_math(Dataset.from_dict({"question": ["1+1"], "level": [1]}))

    def test_brace_less_box(self):
        dataset = standardize_math(Dataset.from_list([dict(RAW_ROWS[2], level="Level 3")]))
        assert dataset["answer"] == ["9"]


class TestPromptCompletion:
    def test_conversational_format_keeps_other_columns(self):
        dataset = make_synthetic_math(num_per_level=2).map(to_prompt_completion)
        row = dataset[0]
        assert row["prompt"] == [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": row["problem"]},
        ]
        assert row["completion"] == [{"role": "assistant", "content": row["solution"]}]
        assert {"level", "type", "answer", "unique_id"} <= set(dataset.column_names)
        assert "\\boxed{}" in SYSTEM_PROMPT

    def test_without_system_prompt(self):
        row = to_prompt_completion({"problem": "p", "solution": "s"}, system_prompt=None)
        assert row["prompt"] == [{"role": "user", "content": "p"}]

    def test_loss_falls_on_the_completion_only(self, tmp_path):
        dataset = make_synthetic_math(num_per_level=2, levels=(1, 4))
        tokenizer = build_tokenizer(math_corpus(dataset))
        model = build_tiny_model(tokenizer)
        args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_steps=1)
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset.map(to_prompt_completion), processing_class=tokenizer
        )
        batch = next(iter(trainer.get_train_dataloader()))
        for row_index in range(batch["input_ids"].shape[0]):
            input_ids, labels = batch["input_ids"][row_index], batch["labels"][row_index]
            real = batch["attention_mask"][row_index].bool()
            text = tokenizer.decode(input_ids[real])
            # find the problem in the batch row, then check its prompt tokens are masked and its solution is not
            source = next(row for row in dataset if row["problem"] in text)
            prompt_text = tokenizer.apply_chat_template(
                to_prompt_completion(source)["prompt"], tokenize=False, add_generation_prompt=True
            )
            prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            start = int(real.nonzero()[0])
            assert input_ids[start : start + len(prompt_ids)].tolist() == list(prompt_ids)
            assert (labels[start : start + len(prompt_ids)] == -100).all()
            completion_labels = labels[start + len(prompt_ids) :][real[start + len(prompt_ids) :]]
            assert (completion_labels != -100).all()
            assert source["solution"] in tokenizer.decode(completion_labels)
            assert (labels[~real] == -100).all()


class TestSplitTrainValidation:
    def test_stratified_and_seeded(self):
        dataset = make_synthetic_math(num_per_level=40)
        splits = split_train_validation(dataset, validation_size=0.25, seed=3)
        assert len(splits["validation"]) == 50 and len(splits["train"]) == 150
        assert Counter(splits["validation"]["level"]) == dict.fromkeys(range(1, 6), 10)
        assert splits["train"].column_names == dataset.column_names
        assert not set(splits["train"]["unique_id"]) & set(splits["validation"]["unique_id"])
        again = split_train_validation(dataset, validation_size=0.25, seed=3)
        assert again["validation"]["unique_id"] == splits["validation"]["unique_id"]
        other = split_train_validation(dataset, validation_size=0.25, seed=4)
        assert other["validation"]["unique_id"] != splits["validation"]["unique_id"]

    def test_int_size(self):
        splits = split_train_validation(make_synthetic_math(num_per_level=10), validation_size=10, seed=0)
        assert len(splits["validation"]) == 10
        assert splits["validation"].features["level"].dtype == "int64"

    @pytest.mark.parametrize("size", [0.0, 1.0, 0, 50, "0.1"])
    def test_invalid_size(self, size):
        with pytest.raises(ValueError, match="`validation_size`"):
            split_train_validation(make_synthetic_math(num_per_level=10), validation_size=size)


class TestSyntheticMath:
    def test_columns_and_boxed_answers(self):
        dataset = make_synthetic_math(num_per_level=5)
        assert dataset.column_names == ["problem", "solution", "answer", "level", "type", "unique_id"]
        assert Counter(dataset["level"]) == dict.fromkeys(range(1, 6), 5)
        assert len(set(dataset["unique_id"])) == len(dataset)
        for row in dataset:
            assert row["solution"].endswith(f"\\boxed{{{row['answer']}}}")
            assert extract_boxed_answer(row["solution"]) == row["answer"]

    def test_deterministic(self):
        assert make_synthetic_math(num_per_level=20, seed=1).to_dict() == make_synthetic_math(20, seed=1).to_dict()
        assert make_synthetic_math(num_per_level=20, seed=1)["problem"] != make_synthetic_math(20, seed=2)["problem"]
        # a level's rows do not depend on which other levels are generated
        alone = make_synthetic_math(num_per_level=10, levels=(3,), seed=1)
        assert (
            alone["problem"]
            == make_synthetic_math(num_per_level=10, seed=1).filter(lambda r: r["level"] == 3)["problem"]
        )

    def test_answers_are_correct(self):
        for row in make_synthetic_math(num_per_level=20, levels=(1, 2, 3)):
            a, operator, b = re.match(r"What is (\d+) ([-+*]) (\d+)\?", row["problem"]).groups()
            assert int(row["answer"]) == eval(f"{a} {operator} {b}")
        for row in make_synthetic_math(num_per_level=20, levels=(4,)):
            a, b, c = map(int, re.match(r"Solve for x: (\d+)x \+ (\d+) = (\d+)\.", row["problem"]).groups())
            assert a * int(row["answer"]) + b == c

    def test_difficulty_grows_with_level(self):
        dataset = make_synthetic_math(num_per_level=200)

        def mean_per_level(measure):
            return [statistics.mean(measure(row) for row in dataset if row["level"] == level) for level in range(1, 6)]

        solution_length = mean_per_level(lambda row: len(row["solution"]))
        digits_to_write = mean_per_level(lambda row: len(re.findall(r"\d", row["solution"])))
        assert solution_length == sorted(solution_length) and len(set(solution_length)) == 5
        assert digits_to_write == sorted(digits_to_write) and len(set(digits_to_write)) == 5
        numbers_in_problem = mean_per_level(lambda row: len(re.findall(r"\d+", row["problem"])))
        assert numbers_in_problem == sorted(numbers_in_problem)
        # level 1 stays short and regular, so that a tiny model can learn it
        assert all(len(row["solution"]) <= 24 for row in dataset if row["level"] == 1)

    def test_invalid_levels(self):
        with pytest.raises(ValueError, match="`levels` must be within"):
            make_synthetic_math(levels=(0, 6))

    def test_corpus(self):
        corpus = math_corpus(make_synthetic_math(num_per_level=2))
        assert corpus[0] == SYSTEM_PROMPT and len(corpus) == 1 + 2 * 10

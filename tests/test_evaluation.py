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
import json
import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model

from trl_plrs.math.data import SYSTEM_PROMPT, make_synthetic_math, math_corpus
from trl_plrs.math.evaluation import PREDICTION_COLUMNS, evaluate_math, generate_completions, rescore_predictions
from trl_plrs.testing import build_tiny_model, build_tokenizer


@pytest.fixture(scope="module")
def dataset():
    # two rows per level: prompts of clearly different lengths, so batches are left-padded
    return make_synthetic_math(num_per_level=2)


@pytest.fixture(scope="module")
def tokenizer(dataset):
    return build_tokenizer(math_corpus(make_synthetic_math(num_per_level=20)))


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request, tokenizer):
    return build_tiny_model(tokenizer, architecture=request.param, dtype=torch.float32)


def _read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_batched_generation_equals_one_by_one(model, tokenizer, dataset):
    problems = dataset["problem"]
    lengths = {len(tokenizer(problem)["input_ids"]) for problem in problems}
    assert len(lengths) > 3  # the batch really is padded
    batched = generate_completions(model, tokenizer, problems, max_new_tokens=16)
    one_by_one = [generate_completions(model, tokenizer, [problem], max_new_tokens=16)[0] for problem in problems]
    assert batched == one_by_one
    assert all(completion for completion in batched)


def test_generation_decodes_only_new_tokens_and_restores_state(model, tokenizer, dataset):
    model.train()
    tokenizer.padding_side = "right"
    completions = generate_completions(model, tokenizer, dataset["problem"][:3], max_new_tokens=8)
    assert model.training and tokenizer.padding_side == "right"
    for problem, completion in zip(dataset["problem"][:3], completions, strict=True):
        # the paper's notebook decoded the prompt too, so "the output has a box" was always true
        assert problem not in completion and SYSTEM_PROMPT not in completion


def test_tokenizer_without_pad_token_is_restored(tokenizer, dataset):
    tokenizer = build_tokenizer(math_corpus(dataset))
    model = build_tiny_model(tokenizer)
    tokenizer.pad_token = None
    generate_completions(model, tokenizer, dataset["problem"][:2], max_new_tokens=4)
    assert tokenizer.pad_token is None


class _Scripted(torch.nn.Module):
    """Stands in for a model in CSV tests: `generate` is replaced by a lookup, so answers are known."""


def _scripted_generate(monkeypatch, answers, calls):
    def fake_generate_completions(model, tokenizer, problems, max_new_tokens, system_prompt):
        calls.append(list(problems))
        return [answers[problem] for problem in problems]

    monkeypatch.setattr("trl_plrs.math.evaluation.generate_completions", fake_generate_completions)


def test_csv_summary_and_resume(tmp_path, dataset, monkeypatch):
    answers = {}
    for index, row in enumerate(dataset):
        # right, right in symbolic only (0.5 vs 1/2 style), wrong, no box; cycling over rows
        answers[row["problem"]] = [
            f"So \\boxed{{{row['answer']}}}.",
            f"\\boxed{{{row['answer']}.0}}",
            "\\boxed{-1}",
            "I don't know.",
        ][index % 4]
    calls = []
    _scripted_generate(monkeypatch, answers, calls)
    output_dir = str(tmp_path / "eval")

    # an interrupted run: only the first 4 rows were written
    first = evaluate_math(_Scripted(), None, dataset.select(range(4)), batch_size=3, output_dir=output_dir)
    assert first["num_generated"] == 4 and [len(batch) for batch in calls] == [3, 1]
    rows = _read_csv(os.path.join(output_dir, "predictions.csv"))
    assert list(rows[0]) == list(PREDICTION_COLUMNS)
    assert [row["unique_id"] for row in rows] == dataset["unique_id"][:4]

    # simulate a crash in the middle of writing a row
    with open(os.path.join(output_dir, "predictions.csv"), "a") as file:
        file.write('synthetic/level_3/0,3,Multiplication,"What is')

    calls.clear()
    summary = evaluate_math(_Scripted(), None, dataset, batch_size=4, output_dir=output_dir)
    generated = [problem for batch in calls for problem in batch]
    # Only the missing rows, longest prompts first.
    assert generated == sorted(dataset["problem"][4:], key=len, reverse=True)
    assert summary["num_generated"] == 6 and summary["num_resumed"] == 4
    rows = _read_csv(os.path.join(output_dir, "predictions.csv"))
    assert [row["unique_id"] for row in rows] == dataset["unique_id"]  # one CSV, in the dataset's order

    by_id = {row["unique_id"]: row for row in rows}
    first_row = by_id[dataset["unique_id"][0]]
    assert first_row["prediction"] == dataset["answer"][0] and first_row["correct_strict"] == "True"
    second_row = by_id[dataset["unique_id"][1]]
    assert (second_row["correct_strict"], second_row["correct_symbolic"]) == ("False", "True")
    fourth_row = by_id[dataset["unique_id"][3]]
    assert fourth_row["prediction"] == "" and fourth_row["correct_symbolic"] == "False"

    assert summary["overall"]["count"] == 10
    assert summary["overall"]["correct_strict"] == 3 and summary["overall"]["correct_symbolic"] == 6
    assert summary["per_level"]["1"]["count"] == 2
    with open(os.path.join(output_dir, "summary.json")) as file:
        assert json.load(file)["overall"] == summary["overall"]
    with open(os.path.join(output_dir, "summary.md")) as file:
        assert "| **overall** | 10 | 30.00 (3) | 60.00 (6) |" in file.read()

    # a complete CSV: nothing left to generate
    calls.clear()
    again = evaluate_math(_Scripted(), None, dataset, output_dir=output_dir)
    assert calls == [] and again["overall"] == summary["overall"]


def test_rescore_predictions(tmp_path):
    csv_path = tmp_path / "old" / "predictions.csv"
    csv_path.parent.mkdir()
    with open(csv_path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["unique_id", "level", "type", "gold", "completion"])
        writer.writeheader()
        writer.writerow(
            {"unique_id": "a", "level": 1, "type": "T", "gold": "\\frac{1}{2}", "completion": "\\boxed{0.5}"}
        )
        writer.writerow(
            {"unique_id": "b", "level": 2, "type": "T", "gold": "\\{1,2\\}", "completion": "\\boxed{\\{2,1\\}}"}
        )
        # the prompt is not in the completion any more, so "has a box" is not always true
        writer.writerow({"unique_id": "c", "level": 2, "type": "T", "gold": "4", "completion": "It is 4."})
    summary = rescore_predictions(str(csv_path), output_dir=str(tmp_path / "new"))
    assert summary["num_rescored"] == 3
    assert summary["overall"]["correct_strict"] == 1 and summary["overall"]["correct_symbolic"] == 2
    rows = _read_csv(tmp_path / "new" / "predictions.csv")
    assert list(rows[0]) == list(PREDICTION_COLUMNS)
    assert [row["prediction"] for row in rows] == ["0.5", "\\{2,1\\}", ""]
    assert os.path.exists(tmp_path / "new" / "summary.md")


def test_evaluate_peft_model_on_tiny_model(tmp_path, tokenizer, dataset):
    model = build_tiny_model(tokenizer)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    summary = evaluate_math(peft_model, tokenizer, dataset, batch_size=4, max_new_tokens=6, output_dir=str(tmp_path))
    assert summary["overall"]["count"] == len(dataset)
    assert peft_model.training


def test_invalid_arguments(tokenizer):
    model = build_tiny_model(tokenizer)
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer"):
        evaluate_math(model, tokenizer, make_synthetic_math(1), batch_size=0)
    with pytest.raises(ValueError, match="needs a `problem` column"):
        evaluate_math(model, tokenizer, Dataset.from_dict({"question": ["q"]}))
    with pytest.raises(ValueError, match="`csv_path` must be an existing predictions CSV"):
        rescore_predictions("does/not/exist.csv")


def _load_example_script():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "evaluate_math.py")
    spec = importlib.util.spec_from_file_location("evaluate_math_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_script_with_adapter_then_rescore(tmp_path, tokenizer):
    script = _load_example_script()
    model_dir, adapter_dir = str(tmp_path / "model"), str(tmp_path / "adapter")
    model = build_tiny_model(tokenizer)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter_dir)
    dataset_path = str(tmp_path / "test.jsonl")
    make_synthetic_math(num_per_level=2).to_json(dataset_path)

    (args,) = script.TrlParser(dataclass_types=[script.EvaluateArguments]).parse_args_and_config(
        [
            *("--model_name_or_path", model_dir, "--adapter_path", adapter_dir, "--dataset_path", dataset_path),
            *("--limit", "3", "--batch_size", "2", "--max_new_tokens", "4", "--output_dir", str(tmp_path / "eval")),
        ]
    )
    summary = script.main(args)
    assert summary["overall"]["count"] == 3

    (args,) = script.TrlParser(dataclass_types=[script.EvaluateArguments]).parse_args_and_config(
        ["--rescore_csv", str(tmp_path / "eval" / "predictions.csv"), "--output_dir", str(tmp_path / "rescored")]
    )
    assert script.main(args)["num_rescored"] == 3
    with pytest.raises(
        ValueError, match="`model_name_or_path` \\(or an `adapter_path` that records its base\\) is required"
    ):
        script.EvaluateArguments()


# --------------------------------------------------------------------------------------------------------------------
# The vLLM backend's arguments (its generation is compared with this backend's in tests/test_vllm_backend.py)


def test_vllm_backend_without_vllm_says_what_to_install(dataset, monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, as when it is not installed
    tokenizer = build_tokenizer()
    with pytest.raises(ImportError, match="pip install trl_plrs\\[vllm\\]"):
        evaluate_math(str(tmp_path), tokenizer, dataset, backend="vllm")


@pytest.mark.parametrize(
    "model_is_path, kwargs, match",
    [
        (True, {"backend": "tgi"}, "`backend` must be 'hf' or 'vllm'"),
        (False, {"backend": "vllm"}, "`backend='vllm'` loads the model itself"),
        (True, {}, "`backend='hf'` generates with a loaded model"),
        (False, {"adapter_path": "adapter"}, "`adapter_path` is for `backend='vllm'`"),
    ],
)
def test_backend_arguments_are_checked(dataset, tmp_path, model_is_path, kwargs, match):
    tokenizer = build_tokenizer()
    model = str(tmp_path) if model_is_path else build_tiny_model(tokenizer)
    with pytest.raises(ValueError, match=match):
        evaluate_math(model, tokenizer, dataset, **kwargs)

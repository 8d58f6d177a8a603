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
"""Smoke tests of the benchmark scripts: they run and write their tables. No timing is asserted."""

import json
import os
import subprocess
import sys

import pytest


BENCHMARKS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture
def benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS_DIR)


def test_run_all_help():
    completed = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS_DIR, "run_all.py"), "--help"], capture_output=True, text=True
    )
    assert completed.returncode == 0
    assert "--quick" in completed.stdout


def test_data_prep_skips_without_math(benchmarks_on_path, tmp_path, capsys):
    import bench_data_prep

    assert (
        bench_data_prep.main(["--math_train_path", str(tmp_path / "absent.jsonl"), "--output_dir", str(tmp_path)])
        is None
    )
    assert "Skipping" in capsys.readouterr().out
    assert not os.listdir(tmp_path)


def test_overhead_smoke_writes_markdown_and_json(benchmarks_on_path, tmp_path):
    import bench_overhead

    args = ["--repeats", "1", "--steps_per_stage", "2", "--hidden_size", "32", "--output_dir", str(tmp_path)]
    results = bench_overhead.main(args)
    assert results["records"][0]["curriculum"]["steps_count"] == results["records"][0]["sft"]["steps_count"] == 10
    with open(tmp_path / "overhead.json") as json_file:
        written = json.load(json_file)
    assert written["machine"]["OMP_NUM_THREADS"] == "1"
    assert "Wall ratio" in (tmp_path / "overhead.md").read_text()


def test_gpu_benchmark_smoke_on_cpu(benchmarks_on_path, tmp_path):
    import bench_gpu

    results = bench_gpu.main(["--smoke", "--output_dir", str(tmp_path)])
    records = {record["name"]: record for record in results["records"]}
    assert set(records) == set(bench_gpu.RUNS)
    assert [len(record["stages"]) for record in records.values() if record["kind"] == "curriculum"] == [5] * 4
    # On CPU the smoke run trains without autocast, so "auto" stacks on the bf16 base.
    assert records["b5_bf16"]["adapter_transition"] == "stack" and records["b5_4bit"]["adapter_transition"] == "stack"
    # The export check measures something: exact for the default transition, learning lost for a bf16 merge.
    assert records["b5_bf16"]["export"]["max_layer_mismatch"] < 0.05
    assert records["b5_bf16_merge"]["export"]["max_layer_mismatch"] > 0.05
    assert "Device: **CPU (smoke run, tiny shapes)**" in (tmp_path / "gpu.md").read_text()


def test_packing_benchmark_smoke_on_synthetic_rows(benchmarks_on_path, tmp_path):
    import bench_packing

    results = bench_packing.main(
        [
            "--synthetic",
            "--rows",
            "40",
            "--steps",
            "2",
            "--repeats",
            "1",
            "--max_length",
            "256",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert results["packed"]["sequences"] < results["padded"]["sequences"] == 40
    assert results["ratio"]["n"] == 1
    assert "packed / padded" in (tmp_path / "packing.md").read_text()


def test_packing_benchmark_skips_without_math(benchmarks_on_path, tmp_path, capsys):
    import bench_packing

    assert (
        bench_packing.main(["--math_train_path", str(tmp_path / "absent.jsonl"), "--output_dir", str(tmp_path)])
        is None
    )
    assert "Skipping" in capsys.readouterr().out


def test_difficulty_benchmark_smoke_on_synthetic_rows(benchmarks_on_path, tmp_path):
    import bench_difficulty

    results = bench_difficulty.main(
        ["--synthetic", "--rows", "40", "--repeats", "1", "--max_length", "256", "--output_dir", str(tmp_path)]
    )
    assert results["rows"] == 40 and results["steps"] == 5  # one epoch of 40 rows in batches of 8
    assert results["ratio"]["n"] == 1 and results["ratio"]["median"] > 0
    assert "Scoring / one epoch" in (tmp_path / "difficulty.md").read_text()


def test_grading_benchmark_scores_the_suite(benchmarks_on_path, tmp_path):
    import bench_grading

    results = bench_grading.main(["--math_test_path", str(tmp_path / "absent.jsonl"), "--output_dir", str(tmp_path)])
    assert results["pairs"] >= 300 and results["timing"] is None
    assert results["overall"]["symbolic"] == 1.0 > results["overall"]["math_verify"] > results["overall"]["strict"]
    assert "plain math-verify" in (tmp_path / "grading.md").read_text()


def test_stack_smoke_writes_markdown_and_json(benchmarks_on_path, tmp_path):
    import bench_stack

    data = bench_stack.main(["--quick", "--output_dir", str(tmp_path)])
    stages = data["shapes"]["quick"]["stages"]
    assert [stage["frozen_rank"] for stage in stages] == [0, 256, 384, 448, 480]
    # Per layer: merge runs one LoRA branch, the unfused stack one per stage, the fused stack at most two.
    branches = [
        {
            layout: record["stages"][index]["lora_branches_per_layer"]
            for layout, record in data["shapes"]["quick"]["repeats"][0].items()
        }
        for index in range(5)
    ]
    assert branches == [{"merge": 1, "unfused": min(index + 1, 5), "fused": min(index + 1, 2)} for index in range(5)]
    assert "fused / merge" in (tmp_path / "stack.md").read_text()
    assert json.loads((tmp_path / "stack.json").read_text())["machine"]["OMP_NUM_THREADS"] == "1"

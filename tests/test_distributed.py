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
A 3-stage PLRS curriculum launched with `accelerate launch --num_processes 2` on CPU (gloo): DDP, DeepSpeed ZeRO-2
and ZeRO-3, and FSDP2 (through the test-only shim `tests/distributed/fsdp_on_cpu.py`) in merge and stack modes, each
with our accelerate config (whose JSON sets `stage3_gather_16bit_weights_on_model_save`) and with a user's own JSON
passed as `PLRSConfig(deepspeed=...)` that lacks it (DeepSpeed's default, as in the Hugging Face docs' examples).
Every run must land on the single-process result. Each run is a subprocess (DeepSpeed state leaks into later trainers
of one Python process) whose worker, `tests/distributed/run_curriculum.py`, writes one JSON report per rank.

Select them with `pytest -m distributed`. The first DeepSpeed run compiles DeepSpeed's shm op (~45 s, cached in
`~/.cache/torch_extensions`).
"""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from trl_plrs.adapters import ADAPTER_WEIGHTS_NAME
from trl_plrs.testing import save_tiny_model


pytestmark = [pytest.mark.distributed, pytest.mark.slow]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTRIBUTED_DIR = os.path.join(REPO_ROOT, "tests", "distributed")
WORKER = os.path.join(DISTRIBUTED_DIR, "run_curriculum.py")
SCHEDULED_RANKS = [16, 8, 4]
# float32 tiny model: the transition and reload checks differ only by float rounding (~3e-7 observed).
LOGITS_ATOL = 1e-5
# 2 processes x 2 rows vs one process x 4 rows, same seed and global batch: max |difference| of the final adapter's
# weights was 1.5e-6 for DDP (weights up to 0.25); gradients are averaged in a different order, nothing else differs.
DISTRIBUTED_VS_SINGLE_ATOL = 1e-5
LAUNCH_TIMEOUT = 600

# engine: (accelerate config, the user's DeepSpeed JSON passed to `PLRSConfig(deepspeed=...)`, type, ZeRO stage)
ENGINES = {
    "ddp": ("ddp_cpu.yaml", None, "DistributedType.MULTI_CPU", None),
    "zero2": ("deepspeed_zero2_cpu.yaml", None, "DistributedType.DEEPSPEED", 2),
    "zero2_user_json": ("ddp_cpu.yaml", "deepspeed_zero2_user.json", "DistributedType.DEEPSPEED", 2),
    "zero3": ("deepspeed_zero3_cpu.yaml", None, "DistributedType.DEEPSPEED", 3),
    # No `stage3_gather_16bit_weights_on_model_save`: the full model cannot be gathered, the stage adapters can.
    "zero3_user_json": ("ddp_cpu.yaml", "deepspeed_zero3_user.json", "DistributedType.DEEPSPEED", 3),
    # TRL's FSDP2 settings; the worker applies the test-only shim `fsdp_on_cpu.py` (accelerate runs FSDP on GPUs only).
    "fsdp2": ("fsdp2_cpu.yaml", None, "DistributedType.FSDP", None),
}
MATRIX = [("ddp", "merge")] + [
    (engine, transition) for engine in ENGINES if engine != "ddp" for transition in ("merge", "stack")
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])),
    }


def _run(command: list[str], output_dir: str) -> None:
    result = subprocess.run(command, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    with open(os.path.join(os.path.dirname(output_dir), os.path.basename(output_dir) + ".log"), "w") as log:
        log.write(result.stdout + result.stderr)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def launch(engine: str, base_dir: str, output_dir: str, *worker_args: str) -> list[dict]:
    config_name, user_json, _, _ = ENGINES[engine]
    config_file = os.path.join(DISTRIBUTED_DIR, config_name)
    if user_json is not None:
        worker_args = (*worker_args, "--deepspeed", os.path.join(DISTRIBUTED_DIR, user_json))
    if engine.startswith("fsdp"):
        worker_args = (*worker_args, "--fsdp_on_cpu")
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", config_file,
        "--num_processes", "2",
        "--main_process_port", str(_free_port()),
        WORKER, "--base_dir", base_dir, "--output_dir", output_dir, *worker_args,
    ]  # fmt: skip
    _run(command, output_dir)
    return [_read_report(output_dir, rank) for rank in range(2)]


def _read_report(output_dir: str, rank: int) -> dict:
    with open(os.path.join(output_dir, f"report-rank{rank}.json")) as file:
        return json.load(file)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_model(str(tmp_path_factory.mktemp("base")), architecture="llama", hidden_size=64)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, base_dir):
    """Each (engine, transition) run once per module, launched on first use."""
    root = tmp_path_factory.mktemp("distributed")
    cache = {}

    def get(engine: str, transition: str) -> tuple[list[dict], str]:
        if (engine, transition) not in cache:
            output_dir = str(root / f"{engine}-{transition}")
            cache[engine, transition] = (
                launch(engine, base_dir, output_dir, "--adapter_transition", transition),
                output_dir,
            )
        return cache[engine, transition]

    return get


@pytest.fixture(scope="module")
def single_process_runs(tmp_path_factory, base_dir):
    """The reference: one process, 4 rows per step (= 2 processes x 2 rows), same seed, no dropout."""
    root = tmp_path_factory.mktemp("single")
    cache = {}

    def get(transition: str) -> str:
        if transition not in cache:
            output_dir = str(root / transition)
            command = [sys.executable, WORKER, "--base_dir", base_dir, "--output_dir", output_dir]
            _run([*command, "--per_device_train_batch_size", "4", "--adapter_transition", transition], output_dir)
            assert _read_report(output_dir, 0)["num_processes"] == 1
            cache[transition] = output_dir
        return cache[transition]

    return get


def _logits(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("engine, transition", MATRIX)
def test_curriculum_survives_engine(runs, single_process_runs, base_dir, engine, transition):
    reports, output_dir = runs(engine, transition)
    _, _, distributed_type, zero_stage = ENGINES[engine]

    # Both ranks finished, as two real processes of one job.
    assert [report["process_index"] for report in reports] == [0, 1]
    for report in reports:
        assert report["num_processes"] == 2
        assert report["distributed_type"] == distributed_type
        assert report["zero_stage"] == zero_stage
        assert [stage["lora_rank"] for stage in report["stages"]] == SCHEDULED_RANKS
        assert [summary["steps"] for summary in report["stage_summaries"]] == [3, 3, 3]

        for stage, begin in zip(report["stages"], report["stage_begin"], strict=True):
            assert begin["stage"] == stage["index"]
            # Exactly one trainable adapter, of the scheduled rank; the base stays frozen.
            assert begin["trainable_adapters"] == ["default"]
            assert begin["default_ranks"] == [stage["lora_rank"]]
            assert begin["base_trainable"] == []
            if transition == "stack" and stage["index"]:
                # One frozen adapter carries the finished stages: a rank of theirs summed, gathered whole under ZeRO-3.
                assert begin["adapters"] == ["default", "frozen_stages"]
                assert begin["frozen_ranks"] == [sum(SCHEDULED_RANKS[: stage["index"]])]
            else:
                assert begin["adapters"] == ["default"]
                assert begin["frozen_ranks"] == []
            if zero_stage == 3:
                # Without zero persistence thresholds a tiny model is not sharded and the gather would prove nothing.
                assert begin["partitioned_base_weights"] == begin["base_weights"] > 0
            else:
                assert begin["partitioned_base_weights"] == 0
            # FSDP2 shards every base weight (a `DTensor` per weight); the stage adapters stay whole on every rank.
            expected_sharded = begin["base_weights"] if engine == "fsdp2" else 0
            assert begin["sharded_base_weights"] == expected_sharded

        # The transition (merge/freeze, new adapter, re-wrap by the engine) leaves the model's function unchanged.
        for end, begin in zip(report["stage_end"][:-1], report["stage_begin"][1:]):
            torch.testing.assert_close(_logits(begin["logits"]), _logits(end["logits"]), rtol=0, atol=LOGITS_ATOL)

    # The trainable parameters are identical on both ranks after EVERY stage: a stale DDP wrapper or engine would let
    # the new adapter's gradients go unsynchronised while the logged loss looks fine.
    for stage_index in range(len(SCHEDULED_RANKS)):
        checksums = [report["stage_end"][stage_index]["checksum"] for report in reports]
        assert checksums[0]["count"] == 28  # A and B of 7 targets x 2 layers
        assert checksums[0]["sha256"] == checksums[1]["sha256"], f"ranks diverged at stage {stage_index}"
        # Training moved the adapter (B starts at zero).
        assert checksums[0]["sum"] != 0

    # The saved combined adapter, on the original base, reproduces the trained model.
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, output_dir).eval()
    assert model.peft_config["default"].r == sum(SCHEDULED_RANKS)
    batch = {key: torch.tensor(value) for key, value in reports[0]["probe_batch"].items()}
    with torch.no_grad():
        reloaded = model(**batch).logits.double()
    for report in reports:
        torch.testing.assert_close(reloaded, _logits(report["final_logits"]), rtol=0, atol=LOGITS_ATOL)
    trained_moved = (_logits(reports[0]["final_logits"]) - _logits(reports[0]["stage_begin"][0]["logits"])).abs()
    assert trained_moved.max() > 1e-3

    # The same curriculum in one process with the same global batch (4 rows per step) gives the same adapter: every
    # stage adapter is gathered whole (in fp32) whatever the engine and its 16-bit gather flag.
    single_weights = load_file(os.path.join(single_process_runs(transition), ADAPTER_WEIGHTS_NAME))
    weights = load_file(os.path.join(output_dir, ADAPTER_WEIGHTS_NAME))
    assert weights.keys() == single_weights.keys()
    for key in weights:
        assert weights[key].dtype == torch.float32
        torch.testing.assert_close(weights[key], single_weights[key], rtol=0, atol=DISTRIBUTED_VS_SINGLE_ATOL)


# (resume flags of one launch, whether rank 0 dies by SIGKILL), after an uninterrupted run of the same arguments
FSDP2_INTERRUPTED_RUN = [
    (["--kill_after_transition_to", "1"], True),  # at the transition to stage 2 (resumes from checkpoint-3)
    (["--resume", "--kill_at_step", "8"], True),  # mid-stage 3, a frozen adapter beside the trainable one
    (["--resume"], False),  # to the end
]


def test_fsdp2_curriculum_killed_and_resumed_matches_uninterrupted(tmp_path, base_dir):
    """
    Under FSDP2 (TRL's settings: `SHARDED_STATE_DICT` checkpoints, `cpu_ram_efficient_loading`), a stack-mode
    curriculum with LoRA dropout and the evaluation per level, killed at a transition and mid-stage, resumes to the
    uninterrupted run's adapters and per-level figures.
    """
    arguments = ["--adapter_transition", "stack", "--lora_dropout", "0.1", "--save_steps", "1", "--eval_per_level"]
    uninterrupted = launch("fsdp2", base_dir, str(tmp_path / "uninterrupted"), *arguments)
    interrupted_dir = str(tmp_path / "interrupted")
    for flags, killed in FSDP2_INTERRUPTED_RUN:
        if killed:
            with pytest.raises(AssertionError, match="failed"):
                launch("fsdp2", base_dir, interrupted_dir, *arguments, *flags)
        else:
            resumed = launch("fsdp2", base_dir, interrupted_dir, *arguments, *flags)
    # FSDP wrote its sharded checkpoints (the only copy of the weights there), the stage end's included.
    assert os.path.isdir(os.path.join(interrupted_dir, "checkpoint-3", "pytorch_model_fsdp_0"))

    for name in ["stage-1", "stage-2", "stage-3", "."]:
        expected = load_file(os.path.join(tmp_path / "uninterrupted", name, ADAPTER_WEIGHTS_NAME))
        weights = load_file(os.path.join(interrupted_dir, name, ADAPTER_WEIGHTS_NAME))
        assert weights.keys() == expected.keys()
        for key in weights:
            torch.testing.assert_close(weights[key], expected[key], rtol=0, atol=DISTRIBUTED_VS_SINGLE_ATOL)
    # Every stage evaluated every level, with the same figures as the uninterrupted run, on both ranks.
    expected_losses = [summary["eval_per_level"]["loss"] for summary in uninterrupted[0]["stage_summaries"]]
    assert [len(losses) for losses in expected_losses] == [3, 3, 3]
    for report in resumed:
        losses = [summary["eval_per_level"]["loss"] for summary in report["stage_summaries"]]
        for stage_losses, stage_expected in zip(losses, expected_losses, strict=True):
            assert stage_losses == pytest.approx(stage_expected, abs=1e-5)


def test_fsdp2_shards_a_4bit_base_and_trains_as_ddp(tmp_path, base_dir):
    """
    QLoRA under FSDP2: a 4-bit NF4 base stored in float32 (`bnb_4bit_quant_storage`) is sharded weight by weight, the
    stack carries the stages, and the final adapter equals DDP's, which runs the same 4-bit arithmetic on the same
    2 x 2-row batches (one process with 4-row batches differs from both by the 4-bit kernels' rounding, ~6e-3).
    """
    arguments = ["--adapter_transition", "stack", "--load_in_4bit"]
    reports = launch("fsdp2", base_dir, str(tmp_path / "fsdp2"), *arguments)
    launch("ddp", base_dir, str(tmp_path / "ddp"), *arguments)
    for report in reports:
        assert [begin["sharded_base_weights"] for begin in report["stage_begin"]] == [14, 14, 14]
        assert [begin["frozen_ranks"] for begin in report["stage_begin"]] == [[], [16], [24]]
    for stage_index in range(len(SCHEDULED_RANKS)):
        checksums = [report["stage_end"][stage_index]["checksum"]["sha256"] for report in reports]
        assert checksums[0] == checksums[1], f"ranks diverged at stage {stage_index}"
    weights = load_file(os.path.join(tmp_path / "fsdp2", ADAPTER_WEIGHTS_NAME))
    ddp_weights = load_file(os.path.join(tmp_path / "ddp", ADAPTER_WEIGHTS_NAME))
    assert weights.keys() == ddp_weights.keys()
    for key in weights:  # the values agree; DDP saves the adapter in its training dtype (bf16 on a 4-bit base)
        torch.testing.assert_close(weights[key], ddp_weights[key].float(), rtol=0, atol=DISTRIBUTED_VS_SINGLE_ATOL)


def test_fsdp2_with_bf16_merges_into_its_fp32_shards(tmp_path, base_dir):
    """
    Under FSDP2 with bf16 mixed precision an fp32-loaded base stays fp32 (only each gathered copy is cast for the
    compute), so `adapter_transition="auto"` merges, as on one process under autocast (DeepSpeed, which casts the
    weights themselves, stacks). The function changes at a transition only by the bf16 compute's rounding, as on one
    process (observed 5.4e-3 vs 3.9e-3 there).
    """
    reports = launch("fsdp2", base_dir, str(tmp_path / "bf16"), "--adapter_transition", "auto", "--bf16")
    for report in reports:
        assert report["adapter_transition"] == "merge"
        assert [begin["frozen_ranks"] for begin in report["stage_begin"]] == [[], [], []]
        for end, begin in zip(report["stage_end"][:-1], report["stage_begin"][1:]):
            torch.testing.assert_close(_logits(begin["logits"]), _logits(end["logits"]), rtol=0, atol=2e-2)
    for stage_index in range(len(SCHEDULED_RANKS)):
        checksums = [report["stage_end"][stage_index]["checksum"]["sha256"] for report in reports]
        assert checksums[0] == checksums[1], f"ranks diverged at stage {stage_index}"


@pytest.mark.parametrize("engine, scored_rows", [("ddp", [[12], [12]]), ("fsdp2", [[24], []])])
def test_difficulty_scoring_is_split_across_processes_and_agrees(tmp_path, base_dir, engine, scored_rows):
    """
    `curriculum_difficulty='base_loss'` under 2 processes: each scores half the rows (under FSDP with
    `cpu_ram_efficient_loading` only the main process holds the weights before sharding: it scores them all), and
    every process agrees with one process on the levels.
    """
    distributed_dir = str(tmp_path / engine)
    reports = launch(engine, base_dir, distributed_dir, "--curriculum_difficulty", "base_loss")
    single_dir = str(tmp_path / "single")
    command = [sys.executable, WORKER, "--base_dir", base_dir, "--output_dir", single_dir]
    _run([*command, "--per_device_train_batch_size", "4", "--curriculum_difficulty", "base_loss"], single_dir)
    single = _read_report(single_dir, 0)

    assert single["scored_rows"] == [24]  # 3 levels x 8 rows, one process
    assert [report["scored_rows"] for report in reports] == scored_rows
    assert reports[0]["row_levels"] == reports[1]["row_levels"] == single["row_levels"]
    assert sorted(single["row_levels"]) == [1] * 8 + [2] * 8 + [3] * 8
    for report in reports:
        assert report["difficulty"]["thresholds"] == pytest.approx(single["difficulty"]["thresholds"], abs=1e-6)
    with open(os.path.join(distributed_dir, "difficulty.csv")) as file:
        distributed_rows = list(csv.DictReader(file))
    with open(os.path.join(single_dir, "difficulty.csv")) as file:
        single_rows = list(csv.DictReader(file))
    assert [(row["row"], row["level"]) for row in distributed_rows] == [
        (row["row"], row["level"]) for row in single_rows
    ]
    for distributed_row, single_row in zip(distributed_rows, single_rows):
        assert float(distributed_row["score"]) == pytest.approx(float(single_row["score"]), abs=1e-6)

    # A rerun (or resume) in the same output_dir reads the levels back: no process scores again.
    if engine != "ddp":
        return
    again = launch("ddp", base_dir, distributed_dir, "--curriculum_difficulty", "base_loss")
    assert [report["scored_rows"] for report in again] == [[], []]
    assert again[0]["row_levels"] == again[1]["row_levels"] == single["row_levels"]


EVALUATION_WORKER = os.path.join(DISTRIBUTED_DIR, "run_evaluation.py")


def _launch_evaluation(base_dir: str, output_dir: str, processes: int) -> list[dict]:
    os.makedirs(output_dir, exist_ok=True)
    worker = [EVALUATION_WORKER, "--base_dir", base_dir, "--output_dir", output_dir]
    if processes == 1:
        command = [sys.executable, *worker]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", os.path.join(DISTRIBUTED_DIR, "ddp_cpu.yaml"),
            "--num_processes", str(processes),
            "--main_process_port", str(_free_port()),
            *worker,
        ]  # fmt: skip
    _run(command, output_dir)
    return [_read_report(output_dir, rank) for rank in range(processes)]


def _predictions(output_dir: str) -> list[dict]:
    with open(os.path.join(output_dir, "eval", "predictions.csv"), newline="") as file:
        return list(csv.DictReader(file))


def test_evaluation_is_split_across_processes_and_equals_one_process(tmp_path, base_dir):
    (single,) = _launch_evaluation(base_dir, str(tmp_path / "single"), 1)
    reports = _launch_evaluation(base_dir, str(tmp_path / "two"), 2)

    # Each process generated its own half, longest prompts first; together every problem once.
    halves = [report["generated"] for report in reports]
    assert sorted(len(half) for half in halves) == [7, 8]
    assert sorted(halves[0] + halves[1]) == sorted(single["generated"])
    assert all(half == sorted(half, key=len, reverse=True) for half in halves)
    # One CSV in the dataset's order, equal to the single process's; every process returns the same report.
    assert _predictions(str(tmp_path / "two")) == _predictions(str(tmp_path / "single"))
    for report in reports:
        assert report["report"] == single["report"]
    assert sorted(os.listdir(tmp_path / "two" / "eval")) == ["predictions.csv", "summary.json", "summary.md"]


def test_interrupted_distributed_evaluation_resumes(tmp_path, base_dir):
    (single,) = _launch_evaluation(base_dir, str(tmp_path / "single"), 1)
    expected = _predictions(str(tmp_path / "single"))
    # An interrupted 2-process run: process 1 had written 3 rows to its part file, the final CSV was never written.
    eval_dir = tmp_path / "resumed" / "eval"
    eval_dir.mkdir(parents=True)
    with open(eval_dir / "predictions.part-1.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(expected[0]))
        writer.writeheader()
        writer.writerows(expected[5:8])
    reports = _launch_evaluation(base_dir, str(tmp_path / "resumed"), 2)
    assert [report["report"]["num_resumed"] for report in reports] == [3, 3]
    assert sum(len(report["generated"]) for report in reports) == 15 - 3
    assert _predictions(str(tmp_path / "resumed")) == expected
    assert not (eval_dir / "predictions.part-1.csv").exists()

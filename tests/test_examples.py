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
"""Every shipped YAML recipe parses with the training script's parser; every accelerate config loads; the offline
demo path of `examples/train_plrs.py` and the table of `examples/run_baselines.py` run end to end on a tiny budget."""

import csv
import glob
import importlib.util
import json
import os
import warnings

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from safetensors.torch import load_file

from trl_plrs.adapters import ADAPTER_WEIGHTS_NAME
from trl_plrs.curriculum import PRESETS


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(REPO_ROOT, "examples", "configs", "*.yaml")))
ACCELERATE_CONFIGS = sorted(
    glob.glob(os.path.join(REPO_ROOT, "accelerate_configs", "*.yaml"))
    + glob.glob(os.path.join(REPO_ROOT, "tests", "distributed", "*.yaml"))
)
PAPER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Recipes ask for bf16 on GPUs; the test machine has none, so the command line overrides it (as a user would).
CPU_OVERRIDES = ["--bf16", "false", "--use_cpu", "true"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_plrs():
    return load_script("train_plrs")


def parse(script, argv):
    return script.make_parser(argv).parse_args_and_config(args=argv)


def test_recipes_cover_the_six_baselines_and_qwen():
    names = [os.path.basename(path) for path in RECIPES]
    presets = [yaml.safe_load(open(path))["plrs_preset"] for path in RECIPES]
    assert set(PRESETS) <= set(presets)
    assert any(name.startswith("qwen2.5") for name in names)


@pytest.mark.parametrize("recipe", RECIPES, ids=os.path.basename)
def test_recipe_parses_with_the_paper_settings(train_plrs, recipe):
    with open(recipe) as file:
        header = file.readline()
        assert header.startswith("# "), "a recipe starts with a comment header"
        assert "accelerate launch" in file.read(), "the header gives the launch command"

    script_args, training_args, model_args = parse(train_plrs, ["--config", recipe, *CPU_OVERRIDES])
    assert model_args.model_name_or_path in ("meta-llama/Llama-3.2-1B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct")
    assert training_args.plrs_preset in PRESETS
    assert training_args.num_train_epochs == 5
    assert training_args.learning_rate == 5e-5
    assert training_args.warmup_steps == 0.1
    assert training_args.lora_alpha_ratio is None  # the preset's alpha = 2r
    assert training_args.seed == 7
    assert training_args.max_length == 512
    assert training_args.early_stopping_patience == 2
    assert training_args.eval_strategy == "epoch"
    assert model_args.use_peft and model_args.lora_dropout == 0.2
    assert model_args.lora_target_modules == PAPER_TARGETS
    assert script_args.eval_after_training and script_args.eval_max_new_tokens == 512
    # The recipe names a model, so none of the offline demo's defaults leak in.
    assert not training_args.output_dir.startswith("outputs/plrs-demo")
    assert training_args.learning_rate != train_plrs.DEMO_TRAINING_DEFAULTS["learning_rate"]


def test_command_line_overrides_recipe(train_plrs):
    recipe = os.path.join(REPO_ROOT, "examples", "configs", "b5_replay_shrink.yaml")
    _, training_args, _ = parse(train_plrs, ["--config", recipe, *CPU_OVERRIDES, "--adapter_transition", "stack"])
    assert training_args.adapter_transition == "stack"


def test_help_starts_with_config_and_the_curriculum_options(train_plrs):
    help_lines = train_plrs.make_parser([]).format_help().splitlines()
    top = "\n".join(help_lines[:60])
    for flag in (
        "--config FILE",
        "--plrs_preset",
        "--curriculum_stages",
        "--replay",
        "--lora_ranks",
        "--lora_alpha_ratio",
    ):
        assert flag in top, flag
    assert "--lora_r/--lora_alpha are overridden" in top
    assert len(help_lines[0]) < 120  # the usage line names the main options, not all 400
    assert any(line.lstrip().startswith("--learning_rate") for line in help_lines)  # every other option stays


def test_no_arguments_selects_the_offline_demo(train_plrs):
    script_args, training_args, model_args = parse(train_plrs, [])
    assert model_args.model_name_or_path is None
    assert training_args.plrs_preset == "replay_shrink"
    assert training_args.output_dir == "outputs/plrs-demo"
    assert training_args.bf16 is False  # no bf16 GPU here
    assert model_args.use_peft and model_args.lora_target_modules == PAPER_TARGETS
    assert script_args.eval_before_training and script_args.eval_after_training


@pytest.mark.parametrize("config_file", ACCELERATE_CONFIGS, ids=os.path.basename)
def test_accelerate_config_loads(config_file):
    config = load_config_from_file(config_file)
    assert config.compute_environment.value == "LOCAL_MACHINE"
    assert config.num_processes >= 1
    if config.distributed_type.value == "DEEPSPEED":
        deepspeed_config = config.deepspeed_config
        if "deepspeed_config_file" in deepspeed_config:
            with open(os.path.join(REPO_ROOT, deepspeed_config["deepspeed_config_file"])) as file:
                stage = json.load(file)["zero_optimization"]["stage"]
        else:
            stage = deepspeed_config["zero_stage"]
        assert f"zero{stage}" in os.path.basename(config_file)


def test_zero3_test_config_really_shards_a_tiny_model():
    with open(os.path.join(REPO_ROOT, "tests", "distributed", "deepspeed_zero3_cpu.json")) as file:
        zero = json.load(file)["zero_optimization"]
    assert zero["stage3_param_persistence_threshold"] == 0
    assert zero["stage3_model_persistence_threshold"] == 0


def tiny_demo_argv(output_dir, *extra):
    return [
        "--output_dir", str(output_dir),
        "--synthetic_rows_per_level", "6",
        "--synthetic_test_rows_per_level", "2",
        "--tiny_hidden_size", "32",
        "--tiny_num_hidden_layers", "1",
        "--max_steps", "1",
        "--per_device_train_batch_size", "4",
        "--eval_max_new_tokens", "4",
        "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


def test_offline_demo_runs_end_to_end(train_plrs, tmp_path, capsys):
    results = train_plrs.main(*parse(train_plrs, tiny_demo_argv(tmp_path / "demo")))

    assert [summary["lora_rank"] for summary in results["stage_summaries"]] == [256, 128, 64, 32, 16]
    rows = [summary["rows"] for summary in results["stage_summaries"]]
    # Full replay: every stage adds its level's rows to the earlier ones; 6 rows per level, minus the validation rows
    # held out (from TRAIN) for the evaluation per level.
    assert rows[0] <= 6 and all(later > earlier for earlier, later in zip(rows, rows[1:])) and 25 <= rows[-1] < 30
    assert results["before"]["overall"]["count"] == results["after"]["overall"]["count"] == 10
    for name in (
        "adapter_model.safetensors",
        "run_summary.json",
        "eval/predictions.csv",
        "eval/summary.md",
        "forgetting_matrix.csv",
        "forgetting_heatmap.png",
    ):
        assert os.path.exists(tmp_path / "demo" / name), name
    matrix = (tmp_path / "demo" / "forgetting_matrix.csv").read_text().splitlines()
    assert sum(line.startswith("exact_match,") for line in matrix) == 6  # before training + after each of 5 stages
    printed = capsys.readouterr().out
    assert "| stage | levels | rows | rank | trainable params | steps | loss | time (s) |" in printed
    assert "| Level 1 | 2 |" in printed and "EM % before training" in printed
    # Stages are numbered from 1 in the folders, the table and the list of outputs printed at the end.
    assert sorted(name for name in os.listdir(tmp_path / "demo") if name.startswith("stage-")) == [
        f"stage-{k}" for k in range(1, 6)
    ]
    assert "| 1 | 1 |" in printed and "| 5 | 5 |" in printed
    outputs = printed.split("\nOutputs\n")[1]
    for name in ("base_model/", "stage-{1..5}/", "forgetting_heatmap.png", "eval/", "run_summary.json"):
        assert os.path.join(str(tmp_path / "demo"), name) in outputs, name


def test_offline_demo_output_reloads_from_its_folder_alone(train_plrs, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from trl_plrs.math.evaluation import evaluate_math

    output_dir = tmp_path / "demo"
    results = train_plrs.main(*parse(train_plrs, tiny_demo_argv(output_dir)))
    with open(output_dir / "adapter_config.json") as file:
        base_path = json.load(file)["base_model_name_or_path"]
    assert base_path == str(output_dir / "base_model")
    # As a user would: the folder alone gives the trained model and its tokenizer.
    model = AutoPeftModelForCausalLM.from_pretrained(str(output_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(output_dir))
    test = train_plrs.make_synthetic_math(2, seed=8)  # the demo's test rows: seed + 1
    evaluate_math(
        model,
        tokenizer,
        test,
        max_new_tokens=4,
        output_dir=str(tmp_path / "reloaded"),
        system_prompt=train_plrs.DEMO_SYSTEM_PROMPT,
        show_progress=False,
    )
    completions = []
    for folder in (output_dir / "eval", tmp_path / "reloaded"):
        with open(folder / "predictions.csv", newline="") as file:
            completions.append([row["completion"] for row in csv.DictReader(file)])
    assert completions[0] == completions[1] and len(completions[0]) == results["after"]["overall"]["count"]


def test_the_demo_re_evaluates_from_its_folder_alone_after_a_move(train_plrs, tmp_path, capsys):
    """`evaluate_math.py --adapter_path RUN` uses what the run recorded (base, system prompt, budget, test split), so
    the demo's accuracy comes back exactly, from a copy of the folder elsewhere; a flag that differs wins, and says so."""
    import shutil

    evaluate = load_script("evaluate_math")
    results = train_plrs.main(*parse(train_plrs, tiny_demo_argv(tmp_path / "demo")))
    moved = tmp_path / "elsewhere" / "demo"
    shutil.move(str(tmp_path / "demo"), str(moved))
    settings = json.loads((moved / "evaluation.json").read_text())
    assert settings["base_model"] == "base_model" and settings["test_split"] == "test_split.jsonl"
    assert settings["system_prompt"] == train_plrs.DEMO_SYSTEM_PROMPT and settings["max_new_tokens"] == 4

    (args,) = evaluate.TrlParser(dataclass_types=[evaluate.EvaluateArguments]).parse_args_and_config(
        args=["--adapter_path", str(moved), "--output_dir", str(tmp_path / "again")]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = evaluate.main(args)
    assert summary["overall"] == results["after"]["overall"]
    # Loading the adapter does not show PEFT's use of transformers' deprecated `is_gradient_checkpointing`.
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    completions = []
    for folder in (moved / "eval", tmp_path / "again"):
        with open(folder / "predictions.csv", newline="") as file:
            completions.append([row["completion"] for row in csv.DictReader(file)])
    assert completions[0] == completions[1]

    (args,) = evaluate.TrlParser(dataclass_types=[evaluate.EvaluateArguments]).parse_args_and_config(
        args=["--adapter_path", str(moved), "--output_dir", str(tmp_path / "other"), "--system_prompt", "Be brief."]
    )
    evaluate.main(args)
    assert "--system_prompt 'Be brief.' differs from the run's" in capsys.readouterr().out


def test_the_demo_resumes_from_the_command_line(train_plrs, tmp_path):
    """The demo saves a checkpoint at every stage end, so `--resume_from_checkpoint True` (a string, as typed) resumes
    it: here at its last checkpoint, which trains nothing again and reuses the evaluation before training."""
    first = train_plrs.main(*parse(train_plrs, tiny_demo_argv(tmp_path / "demo")))
    checkpoints = sorted(name for name in os.listdir(tmp_path / "demo") if name.startswith("checkpoint-"))
    assert len(checkpoints) == 5  # one per stage end
    assert not any(os.path.exists(tmp_path / "demo" / name / "optimizer.pt") for name in checkpoints)
    again = train_plrs.main(*parse(train_plrs, tiny_demo_argv(tmp_path / "demo", "--resume_from_checkpoint", "True")))
    assert again["before"] == first["before"] and again["after"]["overall"] == first["after"]["overall"]
    assert [summary["steps"] for summary in again["stage_summaries"]] == [1, 1, 1, 1, 1]

    # A resume that is refused (an empty folder has no checkpoint) fails before evaluating anything.
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        train_plrs.main(*parse(train_plrs, tiny_demo_argv(tmp_path / "empty", "--resume_from_checkpoint", "true")))
    assert not os.path.exists(tmp_path / "empty" / "eval-before")


def test_ctrl_c_ends_with_one_line_and_its_command_resumes(train_plrs, tmp_path, capsys, monkeypatch):
    """Ctrl-C (a KeyboardInterrupt as stage 3 begins) ends the demo with exit status 130 and one line instead of a
    traceback; the command that line names resumes from the stage-2 checkpoint and ends where an uninterrupted run
    ends."""
    from trl_plrs import CurriculumSFTTrainer

    begin_stage = CurriculumSFTTrainer.begin_stage

    def interrupted_as_stage_3_begins(self, stage):
        if stage.number == 3:
            raise KeyboardInterrupt
        begin_stage(self, stage)

    argv = tiny_demo_argv(tmp_path / "demo")
    with monkeypatch.context() as patch:
        patch.setattr(CurriculumSFTTrainer, "begin_stage", interrupted_as_stage_3_begins)
        with pytest.raises(SystemExit) as exited:
            train_plrs.cli(argv)
    assert exited.value.code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "rerun the same command with --resume_from_checkpoint True" in err

    resumed = train_plrs.cli([*argv, "--resume_from_checkpoint", "True"])
    uninterrupted = train_plrs.cli(tiny_demo_argv(tmp_path / "uninterrupted"))
    assert [s["stage"] for s in resumed["stage_summaries"]] == [1, 2, 3, 4, 5]
    assert [s["train_loss"] for s in resumed["stage_summaries"]] == pytest.approx(
        [s["train_loss"] for s in uninterrupted["stage_summaries"]], abs=1e-6
    )
    final = [load_file(tmp_path / name / ADAPTER_WEIGHTS_NAME) for name in ("demo", "uninterrupted")]
    assert final[0].keys() == final[1].keys()
    for key in final[0]:
        torch.testing.assert_close(final[0][key], final[1][key], rtol=0, atol=1e-6)
    assert resumed["after"] == uninterrupted["after"]


def test_rescoring_writes_beside_the_csv(tmp_path):
    evaluate = load_script("evaluate_math")
    from trl_plrs.math.evaluation import PREDICTION_COLUMNS

    csv_path = tmp_path / "run" / "predictions.csv"
    csv_path.parent.mkdir()
    with open(csv_path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=PREDICTION_COLUMNS)
        writer.writeheader()
        writer.writerow({"unique_id": "a", "level": "Level 1", "type": "Algebra", "problem": "1+1", "gold": "2",
                         "completion": "\\boxed{2}", "prediction": "2", "correct_strict": 1, "correct_symbolic": 1})  # fmt: skip
    (args,) = evaluate.TrlParser(dataclass_types=[evaluate.EvaluateArguments]).parse_args_and_config(
        args=["--rescore_csv", str(csv_path)]
    )
    evaluate.main(args)
    assert (tmp_path / "run" / "summary.json").is_file() and not os.path.exists("eval/summary.json")


@pytest.mark.slow
def test_run_baselines_writes_one_table(tmp_path):
    run_baselines = load_script("run_baselines")
    train_args = tiny_demo_argv(tmp_path / "unused")[2:]
    rows = run_baselines.main(
        run_baselines.parse_args(
            ["--output_dir", str(tmp_path / "baselines"), "--presets", "direct", "replay_shrink", "--", *train_args]
        )
    )
    assert [row["baseline"] for row in rows] == ["base", "B1", "B5"]  # base: the untrained model, measured once
    markdown = (tmp_path / "baselines" / "baselines.md").read_text()
    csv_text = (tmp_path / "baselines" / "baselines.csv").read_text()
    assert "| B1 | direct |" in markdown and "| B5 | replay_shrink |" in markdown
    assert csv_text.splitlines()[0].startswith("baseline,preset,")
    assert "EM L1" in markdown


def test_qlora_recipe_has_the_papers_quantization_optimizer_and_precision(train_plrs):
    from trl import get_quantization_config

    recipe = os.path.join(REPO_ROOT, "examples", "configs", "b5_replay_shrink_qlora.yaml")
    _, training_args, model_args = parse(train_plrs, ["--config", recipe, "--use_cpu", "true", "--fp16", "false"])
    quantization = get_quantization_config(model_args)
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"
    assert quantization.bnb_4bit_use_double_quant
    assert quantization.bnb_4bit_compute_dtype == torch.float16
    assert training_args.optim == "paged_adamw_8bit"
    assert training_args.adapter_transition == "auto"  # stack on a 4-bit base
    with open(recipe) as file:
        recipe_values = yaml.safe_load(file)
    assert recipe_values["fp16"] is True and recipe_values["bf16"] is False


def test_readme_offline_python_example_runs_as_written(tmp_path):
    """The README's offline Python example, extracted and run in a fresh interpreter in an empty folder."""
    import re
    import subprocess
    import sys

    with open(os.path.join(REPO_ROOT, "README.md")) as file:
        readme = file.read()
    block = re.search(r"The same offline, as written.*?```python\n(.*?)```", readme, re.S).group(1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO_ROOT}
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    output = tmp_path / "outputs" / "quickstart"
    assert (output / "adapter_config.json").is_file()
    assert sorted(name for name in os.listdir(output) if name.startswith("stage-")) == [
        f"stage-{k}" for k in range(1, 6)
    ]


@pytest.mark.slow
def test_readme_tiny_offline_recipe_runs_as_written(tmp_path):
    """The README's commands that run a shipped recipe tiny and offline, extracted and run in an empty folder."""
    import re
    import subprocess

    with open(os.path.join(REPO_ROOT, "README.md")) as file:
        readme = file.read()
    block = re.search(r"To run a recipe of `examples/configs/` tiny and offline.*?```bash\n(.*?)```", readme, re.S)
    script = block.group(1).replace("examples/", os.path.join(REPO_ROOT, "examples") + "/")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO_ROOT}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    output = tmp_path / "outputs" / "b5-tiny"
    assert (output / "adapter_config.json").is_file() and (output / "eval" / "summary.md").is_file()
    assert json.loads((output / "run_summary.json").read_text())["preset"] == "replay_shrink"

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
Curriculum sequential fine-tuning with Progressive LoRA Rank Shrinking (PLRS) on MATH, in the shape of TRL's
`trl/scripts/sft.py`.

# Offline demo: no arguments, no hub, a few minutes on 2 CPU cores
A tiny Llama-style model and a tokenizer are built locally, trained with B5 (replay + rank shrinking) on synthetic
leveled arithmetic, and evaluated per level before and after training.
```bash
python examples/train_plrs.py   # one process; `accelerate launch --num_processes 2 ...` for two
```

# The paper's B5 (replay + PLRS) on Llama-3.2-1B-Instruct, from a YAML recipe
```bash
accelerate launch --config_file accelerate_configs/single_gpu.yaml \
    examples/train_plrs.py --config examples/configs/b5_replay_shrink.yaml
```

# The same from the command line, local MATH files, evaluation of the test split after training
```bash
accelerate launch examples/train_plrs.py \
    --model_name_or_path meta-llama/Llama-3.2-1B-Instruct \
    --dataset_path data/math/train.jsonl \
    --test_dataset_path data/math/test.jsonl \
    --plrs_preset replay_shrink \
    --use_peft \
    --lora_dropout 0.2 \
    --lora_target_modules q_proj k_proj v_proj o_proj gate_proj up_proj down_proj \
    --learning_rate 5e-5 \
    --warmup_steps 0.1 \
    --num_train_epochs 5 \
    --per_device_train_batch_size 4 \
    --max_length 512 \
    --seed 7 \
    --eval_after_training \
    --output_dir outputs/plrs-llama-1b-b5
```

# QLoRA (4-bit base): finished adapters cannot be merged into 4-bit weights, so they are stacked
```bash
accelerate launch examples/train_plrs.py --config examples/configs/b5_replay_shrink.yaml \
    --load_in_4bit --use_bnb_nested_quant --adapter_transition stack --output_dir outputs/plrs-llama-1b-b5-qlora
```

# Several GPUs, DeepSpeed ZeRO-2 / ZeRO-3, FSDP2
```bash
accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 4 \
    examples/train_plrs.py --config examples/configs/b5_replay_shrink.yaml
accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml --num_processes 4 \
    examples/train_plrs.py --config examples/configs/b5_replay_shrink.yaml
accelerate launch --config_file accelerate_configs/fsdp2.yaml --num_processes 4 \
    examples/train_plrs.py --config examples/configs/b5_replay_shrink.yaml
```

Without `--model_name_or_path` (on the command line or in the `--config` file) the script runs the offline demo;
command-line arguments still override the demo's defaults (e.g. `--plrs_preset direct --output_dir outputs/b1`).
On a machine without a bf16-capable GPU, `bf16` defaults to `False` and `use_cpu` to `True` (so that
`accelerate launch --multi_gpu --num_processes 2` on CPU gives two gloo processes instead of two lone ones).
"""

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import textwrap
import time
from dataclasses import dataclass, field


# Tiny models are dominated by per-op overhead: on 2 cores, 2 threads per process were no faster for the demo model and
# make 2-process runs much slower, so 1 thread is the default. An explicit `OMP_NUM_THREADS` wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402


if not torch.cuda.is_available():
    # Noise of optional dependencies on a machine without CUDA, about nothing this script does: DeepSpeed, which TRL
    # imports to check whether a model is wrapped, logs "Setting accelerator to CPU" unless told; bitsandbytes,
    # which PEFT imports, warns on CPUs with AVX512-BF16 that its optional `kernels` package (a faster CPU kernel for
    # 4-bit weights) is missing.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
from accelerate import PartialState  # noqa: E402
from accelerate.logging import get_logger  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.utils import is_torch_bf16_gpu_available  # noqa: E402
from trl import ModelConfig, SFTConfig, TrlParser, get_peft_config, get_quantization_config  # noqa: E402

from trl_plrs import CurriculumSFTTrainer, PLRSConfig  # noqa: E402
from trl_plrs.data import split_train_validation  # noqa: E402
from trl_plrs.math import SYSTEM_PROMPT, load_math, make_synthetic_math, math_corpus, to_prompt_completion  # noqa: E402
from trl_plrs.resume import checkpoint_to_resume  # noqa: E402


logger = get_logger(__name__)

PAPER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# The offline demo's defaults, applied only when no model is given. Tuned on 2 CPU cores so that level 1 is learned
# (exact match from 0 to well above it) in a few minutes; the paper's rank schedule (256 -> 16) is kept as is: on a
# 128-wide model rank >= 128 is simply a full-rank update.
DEMO_TRAINING_DEFAULTS = dict(
    output_dir="outputs/plrs-demo",
    plrs_preset="replay_shrink",
    learning_rate=1e-3,
    warmup_steps=0.1,
    num_train_epochs=2,
    per_device_train_batch_size=4,  # many small steps: a random base needs updates more than big batches
    max_length=256,
    logging_steps=25,
    # One checkpoint at the end of every stage (transformers saves at the end of each stage's loop; the curriculum
    # leaves the optimizer state out of it), so that an interrupted demo resumes with `--resume_from_checkpoint True`.
    save_strategy="steps",
    save_steps=10_000,
    report_to="none",
    seed=7,
    # Exact match per level on the validation rows (from TRAIN) after every stage: the forgetting matrix and heatmap.
    stage_eval_per_level=True,
    stage_eval_generate=True,
    stage_eval_before_training=True,
    stage_eval_max_new_tokens=64,
)
DEMO_BASE_DIR = "base_model"
DEMO_MODEL_DEFAULTS = dict(use_peft=True, lora_dropout=0.0, lora_target_modules=PAPER_TARGET_MODULES)
# A short system prompt keeps the sequences (and the CPU time) short; the MATH recipes use `SYSTEM_PROMPT`.
DEMO_SYSTEM_PROMPT = "Solve the problem and put the final answer in \\boxed{}."
DEMO_SCRIPT_DEFAULTS = dict(
    eval_before_training=True, eval_after_training=True, eval_max_new_tokens=64, system_prompt=DEMO_SYSTEM_PROMPT
)


@dataclass
class ScriptArguments:
    """
    Data and evaluation arguments of `examples/train_plrs.py`.

    Args:
        dataset_name (`str`, *optional*):
            MATH on the Hugging Face Hub, e.g. `"EleutherAI/hendrycks_math"` (see [`~trl_plrs.math.load_math`]).
        dataset_path (`str`, *optional*):
            Local MATH train data (`.jsonl`, `.json`, or a folder of per-problem JSON files); wins over `dataset_name`.
        test_dataset_path (`str`, *optional*):
            Local MATH test data for `eval_after_training`; defaults to the `test` split of `dataset_name`.
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split trained on.
        dataset_test_split (`str`, *optional*, defaults to `"test"`):
            Split evaluated by `eval_after_training`; never used for validation or model selection.
        validation_size (`float`, *optional*, defaults to `0.05`):
            Share of the TRAIN rows held out (stratified by level) as the `eval_dataset` when `eval_strategy` is not
            `"no"` (early stopping, best-model selection).
        eval_before_training (`bool`, *optional*, defaults to `False`):
            Evaluate exact match on the test split before training too (the demo's "before" column).
        eval_after_training (`bool`, *optional*, defaults to `False`):
            Evaluate exact match on the test split after training, writing `predictions.csv` and `summary.{json,md}`
            to `output_dir/eval`.
        eval_limit (`int`, *optional*):
            Evaluate only the first `eval_limit` test problems.
        eval_batch_size (`int`, *optional*, defaults to `32`):
            Prompts per generation batch.
        eval_max_new_tokens (`int`, *optional*, defaults to `512`):
            Generation budget per problem (the paper's value).
        system_prompt (`str`, *optional*, defaults to [`~trl_plrs.math.SYSTEM_PROMPT`]):
            System message of every prompt, in training and evaluation.
        synthetic_rows_per_level (`int`, *optional*, defaults to `200`):
            Offline demo: synthetic training rows per level.
        synthetic_test_rows_per_level (`int`, *optional*, defaults to `40`):
            Offline demo: synthetic test rows per level (drawn with another seed).
        tiny_hidden_size (`int`, *optional*, defaults to `128`):
            Offline demo: width of the tiny model.
        tiny_num_hidden_layers (`int`, *optional*, defaults to `2`):
            Offline demo: depth of the tiny model.
        difficulty_warmup_steps (`int`, *optional*, defaults to `150`):
            Offline demo with `--curriculum_difficulty base_loss`: steps of full fine-tuning of the random base on the
            shuffled training rows (all levels mixed) before the rows are scored, so that its loss tells easy rows
            from hard ones. The warmed-up model is the curriculum's base.
    """

    dataset_name: str | None = field(
        default=None, metadata={"help": "MATH on the Hub, e.g. EleutherAI/hendrycks_math."}
    )
    dataset_path: str | None = field(default=None, metadata={"help": "Local MATH train file or folder."})
    test_dataset_path: str | None = field(default=None, metadata={"help": "Local MATH test file or folder."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split trained on."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split evaluated after training."})
    validation_size: float = field(
        default=0.05,
        metadata={
            "help": "Share of TRAIN rows held out for validation when eval_strategy != 'no' or stage_eval_per_level is set."
        },
    )
    eval_before_training: bool = field(default=False, metadata={"help": "Evaluate the test split before training."})
    eval_after_training: bool = field(default=False, metadata={"help": "Evaluate the test split after training."})
    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N test problems."})
    eval_batch_size: int = field(default=32, metadata={"help": "Prompts per generation batch."})
    eval_max_new_tokens: int = field(default=512, metadata={"help": "Generation budget per problem."})
    system_prompt: str = field(default=SYSTEM_PROMPT, metadata={"help": "System message of every prompt."})
    synthetic_rows_per_level: int = field(default=200, metadata={"help": "Offline demo: training rows per level."})
    synthetic_test_rows_per_level: int = field(default=40, metadata={"help": "Offline demo: test rows per level."})
    tiny_hidden_size: int = field(default=128, metadata={"help": "Offline demo: width of the tiny model."})
    tiny_num_hidden_layers: int = field(default=2, metadata={"help": "Offline demo: depth of the tiny model."})
    difficulty_warmup_steps: int = field(
        default=150,
        metadata={
            "help": "Offline demo with --curriculum_difficulty base_loss: full fine-tuning steps of the random base on "
            "the shuffled training rows before scoring, so that its loss tells easy rows from hard ones."
        },
    )


def load_data(script_args: ScriptArguments, training_args: PLRSConfig, offline: bool):
    """Train rows (with `level`), the optional validation rows (from TRAIN), and the test rows to evaluate."""
    if offline:
        train = make_synthetic_math(script_args.synthetic_rows_per_level, seed=training_args.seed)
        test = make_synthetic_math(script_args.synthetic_test_rows_per_level, seed=training_args.seed + 1)
    else:
        source = script_args.dataset_path or script_args.dataset_name
        if source is None:
            raise ValueError(
                "No training data: pass `--dataset_path` (local MATH file or folder) or `--dataset_name` (e.g. "
                "EleutherAI/hendrycks_math), or drop `--model_name_or_path` to run the offline demo."
            )
        train = load_math(source, split=script_args.dataset_train_split, drop_unknown_levels=True)
        test = None
        if script_args.eval_before_training or script_args.eval_after_training:
            test_source = script_args.test_dataset_path or script_args.dataset_name
            if test_source is None:
                raise ValueError("`eval_after_training` needs `--test_dataset_path` or `--dataset_name`.")
            test = load_math(test_source, split=script_args.dataset_test_split)
    if test is not None and script_args.eval_limit is not None:
        test = test.select(range(min(script_args.eval_limit, len(test))))

    validation = None
    if training_args.eval_strategy != "no" or training_args.stage_eval_per_level:
        splits = split_train_validation(train, script_args.validation_size, seed=training_args.seed)
        train, validation = splits["train"], splits["validation"]
    format_kwargs = dict(fn_kwargs={"system_prompt": script_args.system_prompt})
    train = train.map(to_prompt_completion, **format_kwargs)
    if validation is not None:
        validation = validation.map(to_prompt_completion, **format_kwargs)
    return train, validation, test


def evaluate(model, tokenizer, test, script_args, output_dir: str) -> dict:
    """Exact match on `test`, split across processes by `evaluate_math` (each rank holds the whole model)."""
    from trl_plrs.math.evaluation import evaluate_math

    state = PartialState()
    # `evaluate_math` resumes from the predictions CSV it finds; those of an earlier run in the same `output_dir` belong
    # to another model, so they are removed first.
    if state.is_main_process and os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
    state.wait_for_everyone()
    return evaluate_math(
        model,
        tokenizer,
        test,
        batch_size=script_args.eval_batch_size,
        max_new_tokens=script_args.eval_max_new_tokens,
        output_dir=output_dir,
        system_prompt=script_args.system_prompt,
        show_progress=False,
    )


def warm_up(model, tokenizer, train, steps: int, training_args: PLRSConfig):
    """A short full fine-tuning of the demo's random base on the shuffled rows (all levels), with TRL's `SFTTrainer`."""
    from trl import SFTConfig, SFTTrainer

    warmup_args = SFTConfig(
        output_dir=os.path.join(training_args.output_dir, "warmup"),
        max_steps=steps,
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        learning_rate=training_args.learning_rate,
        max_length=training_args.max_length,
        bf16=training_args.bf16,
        use_cpu=training_args.use_cpu,
        seed=training_args.seed,
        save_strategy="no",
        report_to="none",
        logging_steps=max(steps // 3, 1),
        disable_tqdm=training_args.disable_tqdm,
    )
    trainer = SFTTrainer(model, args=warmup_args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    shutil.rmtree(warmup_args.output_dir, ignore_errors=True)
    return trainer.model


def level_agreement(output_dir: str, true_levels: list[int]) -> dict:
    """How well the levels in `output_dir/difficulty.csv` recover `true_levels` (indexed by the CSV's `row`)."""
    import csv

    from trl_plrs.difficulty import DIFFICULTY_CSV, spearman_correlation

    with open(os.path.join(output_dir, DIFFICULTY_CSV), newline="") as file:
        rows = list(csv.DictReader(file))
    truth = [true_levels[int(row["row"])] for row in rows]
    scores = [float(row["score"]) for row in rows]
    levels = [int(row["level"]) for row in rows]
    return {
        "rows": len(rows),
        "spearman_scores": spearman_correlation(scores, truth),
        "spearman_levels": spearman_correlation(levels, truth),
        "same_level": sum(level == true for level, true in zip(levels, truth)) / len(rows),
    }


def save_demo_base(model, tokenizer, base_dir: str):
    """
    Save the demo's random base model and tokenizer to `base_dir` and load the model back from there, so that the
    adapters record `base_dir` as their `base_model_name_or_path` and the output reloads from its folder alone
    (`AutoPeftModelForCausalLM.from_pretrained(output_dir)`), as an adapter of a hub model does.
    """
    state = PartialState()
    base_dir = os.path.abspath(base_dir)
    if state.is_main_process:
        model.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
    state.wait_for_everyone()
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=model.dtype)


def record_evaluation(output_dir: str, model_args, script_args, test, offline: bool) -> None:
    """
    Record in `output_dir` what evaluating the run needs (`evaluation.json`): `examples/evaluate_math.py --adapter_path
    OUTPUT_DIR` then evaluates it as this run did (the base model, the system prompt it trained with, the budget and
    the test split), from wherever the folder is. The demo's test split is saved beside it.
    """
    from trl_plrs.math.evaluation import write_evaluation_settings

    if offline:
        base = os.path.join(output_dir, DEMO_BASE_DIR)
        test_split = os.path.join(output_dir, "test_split.jsonl")
        test.to_json(test_split)
    else:
        base = model_args.model_name_or_path
        test_split = {
            "source": script_args.test_dataset_path or script_args.dataset_name,
            "split": script_args.dataset_test_split,
            "limit": script_args.eval_limit,
        }
    write_evaluation_settings(output_dir, base, script_args.system_prompt, script_args.eval_max_new_tokens, test_split)


# What a run leaves in `output_dir`, in the order it is listed at the end.
OUTPUTS = [
    ("adapter_config.json", "combined adapter of every stage, for the original base (PeftModel.from_pretrained)"),
    ("README.md", "model card with the stage table"),
    (DEMO_BASE_DIR, "the demo's random base model and tokenizer (the adapters' base_model_name_or_path)"),
    ("stage-1", "each stage's own adapter"),
    ("difficulty.csv", "computed difficulty of every training row: score and level (with --curriculum_difficulty)"),
    ("forgetting_matrix.csv", "loss and exact match per level after every stage (also .json)"),
    ("forgetting_heatmap.png", "the forgetting matrix as a heatmap"),
    ("stage_eval", "per-level predictions after every stage (after_stage-k/predictions.csv)"),
    ("eval-before", "exact match on the test split before training (predictions.csv, summary.md)"),
    ("eval", "exact match on the test split after training (predictions.csv, summary.md)"),
    ("run_summary.json", "the stage summaries and the accuracies above"),
    ("evaluation.json", "what evaluating the run needs: base, system prompt, budget, test split (evaluate_math.py)"),
    ("test_split.jsonl", "the demo's test split"),
]


def format_outputs(output_dir: str) -> str:
    """The files and folders a run wrote to `output_dir`, one per line, with what each holds."""
    lines = []
    for name, what in OUTPUTS:
        path = os.path.join(output_dir, name)
        if not os.path.exists(path):
            continue
        if name == "adapter_config.json":
            shown = output_dir
        elif name == "stage-1":
            stages = sum(os.path.isdir(os.path.join(output_dir, f"stage-{k}")) for k in range(1, 1000))
            shown = os.path.join(output_dir, f"stage-{{1..{stages}}}/")
        else:
            shown = path + ("/" if os.path.isdir(path) else "")
        lines.append(f"  {shown:<{len(output_dir) + 24}} {what}")
    return "\n".join(lines)


def format_stage_table(stage_summaries: list[dict]) -> str:
    lines = [
        "| stage | levels | rows | rank | trainable params | steps | loss | time (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for summary in stage_summaries:
        loss = summary.get("train_loss")
        lines.append(
            f"| {summary['stage']} | {','.join(map(str, summary['levels']))} | {summary['rows']:,} | "
            f"{summary['lora_rank']} | {summary['trainable_params']:,} | {summary['steps']} | "
            f"{'-' if loss is None else f'{loss:.3f}'} | {summary['train_runtime']:.1f} |"
        )
    return "\n".join(lines)


def format_accuracy_table(before: dict | None, after: dict | None) -> str:
    reports = {name: report for name, report in (("before", before), ("after", after)) if report is not None}
    any_report = next(iter(reports.values()))
    header = "| level | problems | " + " | ".join(f"EM % {name} training" for name in reports) + " |"
    lines = [header, "|---|---:|" + "---:|" * len(reports)]
    groups = [("overall", "overall", None)] + [(f"Level {lv}", "per_level", lv) for lv in any_report["per_level"]]
    for label, key, level in groups:
        cells = []
        for report in reports.values():
            group = report[key] if level is None else report[key].get(level)
            cells.append("-" if group is None else f"{100 * group['accuracy_strict']:.1f}")
        group = any_report[key] if level is None else any_report[key][level]
        lines.append(f"| {label} | {group['count']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(script_args: ScriptArguments, training_args: PLRSConfig, model_args: ModelConfig) -> dict:
    state = PartialState()
    offline = model_args.model_name_or_path is None
    # Without `--use_peft` the curriculum fine-tunes the full model stage by stage (no rank schedule then: use a preset
    # of one rank, e.g. `--plrs_preset seq_full_replay`), as TRL's `sft.py` does without it.
    peft_config = get_peft_config(model_args)
    train, validation, test = load_data(script_args, training_args, offline)

    quantization_config = None
    if offline:
        from trl_plrs.testing import build_tiny_model, build_tokenizer

        tokenizer = build_tokenizer(corpus=math_corpus(train.select_columns(["problem", "solution"])))
        model = build_tiny_model(
            tokenizer,
            architecture="llama",
            hidden_size=script_args.tiny_hidden_size,
            num_hidden_layers=script_args.tiny_num_hidden_layers,
            seed=training_args.seed,
        )
        # A random output layer at the usual std of 0.02 caps the logits near +-2.5, so a frozen head can never be
        # confident, whatever the adapters learn. Unit-variance logits (std 1/sqrt(hidden)) give it room, as a
        # pretrained head has.
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(training_args.seed)
            model.lm_head.weight.normal_(std=script_args.tiny_hidden_size**-0.5)
        if training_args.curriculum_difficulty is not None:
            # The variant for data without levels: the synthetic levels are set aside (to measure how well the
            # computed ones recover them) and the curriculum runs on levels computed from the rows.
            true_levels = train["level"]
            train = train.remove_columns("level")
            if validation is not None:
                validation = validation.remove_columns("level")
            if training_args.curriculum_difficulty == "base_loss" and script_args.difficulty_warmup_steps > 0:
                model = warm_up(model, tokenizer, train, script_args.difficulty_warmup_steps, training_args)
        model = save_demo_base(model, tokenizer, os.path.join(training_args.output_dir, DEMO_BASE_DIR))
        state.print(
            f"Offline demo: tiny Llama ({sum(p.numel() for p in model.parameters()):,} parameters, "
            f"hidden {script_args.tiny_hidden_size}, {script_args.tiny_num_hidden_layers} layers), synthetic MATH-like "
            f"data ({len(train):,} training rows, {len(test):,} test rows), preset {training_args.plrs_preset}."
        )
    else:
        from transformers import AutoTokenizer

        model = model_args.model_name_or_path
        tokenizer = AutoTokenizer.from_pretrained(
            model, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
        )
        quantization_config = get_quantization_config(model_args)
        model_init_kwargs = dict(
            revision=model_args.model_revision,
            trust_remote_code=training_args.trust_remote_code,
            attn_implementation=model_args.attn_implementation,
            dtype=model_args.dtype,
        )
        model_init_kwargs.update(training_args.model_init_kwargs or {})
        training_args.model_init_kwargs = model_init_kwargs

    start = time.perf_counter()
    trainer = CurriculumSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        peft_config=peft_config,
        quantization_config=quantization_config,
    )
    agreement = None
    if offline and trainer.difficulty is not None:
        agreement = level_agreement(training_args.output_dir, true_levels)
        state.print(
            f"Computed levels ({trainer.difficulty['method']}) against the synthetic ones: Spearman correlation of the "
            f"scores {agreement['spearman_scores']:.3f}, of the levels {agreement['spearman_levels']:.3f}; "
            f"{100 * agreement['same_level']:.1f}% of the rows in their own level."
        )
    # A resume that would be refused (no checkpoint in `output_dir`, another run's) fails here, before any evaluation.
    checkpoint_to_resume(
        training_args.resume_from_checkpoint, training_args.output_dir, trainer.curriculum_fingerprint()
    )
    before = None
    if script_args.eval_before_training:
        evaluation_start = time.perf_counter()
        before_dir = os.path.join(training_args.output_dir, "eval-before")
        summary_path = os.path.join(before_dir, "summary.json")
        if training_args.resume_from_checkpoint and os.path.isfile(summary_path):
            with open(summary_path) as file:  # a resumed run evaluated its base before it was interrupted
                before = json.load(file)
        elif offline:
            # The base model: the trainer's first adapter, added in place, is set aside (its `B` is zero anyway).
            adapter_off = getattr(trainer.model, "disable_adapter", contextlib.nullcontext)
            with adapter_off():
                before = evaluate(trainer.model, tokenizer, test, script_args, before_dir)
        else:
            logger.warning(
                "`eval_before_training` evaluates the base model with `examples/evaluate_math.py`; skipped."
            )
        start += time.perf_counter() - evaluation_start  # not training time
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_time = time.perf_counter() - start
    state.print(f"Training completed in {train_time:.0f} s.")
    state.print(
        "\nPer-stage summary\n" + format_stage_table([summary.to_dict() for summary in trainer.stage_summaries])
    )

    after = None
    if script_args.eval_after_training:
        zero3 = training_args.deepspeed_plugin is not None and training_args.deepspeed_plugin.zero_stage == 3
        if zero3 or trainer.is_fsdp_enabled:
            logger.warning(
                f"`eval_after_training` is skipped under {'ZeRO-3' if zero3 else 'FSDP'} (the weights are sharded): "
                "evaluate the saved adapter "
                f"with `python examples/evaluate_math.py --adapter_path {training_args.output_dir} ...`."
            )
        else:
            after = evaluate(
                trainer.model, tokenizer, test, script_args, os.path.join(training_args.output_dir, "eval")
            )
    if before is not None or after is not None:
        state.print("\nExact match on the test split\n" + format_accuracy_table(before, after))

    results = {
        "preset": training_args.plrs_preset,
        "model": model_args.model_name_or_path or "offline tiny llama",
        "train_time": train_time,
        "num_processes": state.num_processes,
        "stage_summaries": [summary.to_dict() for summary in trainer.stage_summaries],
        "difficulty": trainer.difficulty,
        "difficulty_agreement": agreement,
        "before": before,
        "after": after,
    }
    if state.is_main_process:
        with open(os.path.join(training_args.output_dir, "run_summary.json"), "w") as file:
            json.dump(results, file, indent=2)
        record_evaluation(training_args.output_dir, model_args, script_args, test, offline)
    state.print(f"\nOutputs\n{format_outputs(training_args.output_dir)}")
    trainer.accelerator.end_training()
    return results


def _sets_model(argv: list[str]) -> bool:
    """Whether the command line or its `--config` file names a model (otherwise: the offline demo)."""
    if any(arg == "--model_name_or_path" or arg.startswith("--model_name_or_path=") for arg in argv):
        return True
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        with open(argv[argv.index("--config") + 1]) as file:
            return bool((yaml.safe_load(file) or {}).get("model_name_or_path"))
    return False


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option list, and the description (the curriculum options) as written."""


def curriculum_help() -> str:
    """
    The top of `--help`: `--config`, then the curriculum options of [`PLRSConfig`] (those `SFTConfig` does not
    have), then how they override the LoRA options; the full list of every option follows it.
    """
    sft_fields = {f.name for f in dataclasses.fields(SFTConfig)}
    lines = [
        "Curriculum SFT with Progressive LoRA Rank Shrinking (trl_plrs). Without --model_name_or_path (on the command "
        "line or in --config), runs the offline demo.",
        "",
        "config file:",
        "  --config FILE         YAML file of any options below, e.g. examples/configs/b5_replay_shrink.yaml; "
        "command-line flags override it.",
        "",
        "curriculum options (PLRSConfig; also in the full list below):",
    ]
    for f in dataclasses.fields(PLRSConfig):
        if f.name in sft_fields:
            continue
        flag = f"--{f.name}" + (f" {{{','.join(f.metadata['choices'])}}}" if "choices" in f.metadata else "")
        default = "" if f.default is None else f" (default: {f.default})"
        text = f"{flag}  {f.metadata.get('help', '')}{default}"
        lines += textwrap.wrap(text, width=118, initial_indent="  ", subsequent_indent="        ")
    lines += [
        "",
        "LoRA (ModelConfig): --use_peft trains a fresh LoRA adapter per stage (without it, the full model);",
        "  --lora_target_modules and --lora_dropout apply to every stage. --lora_r/--lora_alpha are overridden by the",
        "  ranks of --plrs_preset or --lora_ranks, and by --lora_alpha_ratio (alpha = ratio x rank; 2.0 with a preset).",
        "",
        "Every option (script, TrainingArguments/SFTConfig, PLRSConfig, ModelConfig) follows.",
    ]
    return "\n".join(lines)


def make_parser(argv: list[str] | None = None) -> TrlParser:
    argv = sys.argv[1:] if argv is None else argv
    parser = TrlParser(
        (ScriptArguments, PLRSConfig, ModelConfig),
        usage="train_plrs.py [--config FILE] [--model_name_or_path M] [--plrs_preset P] [options]",
        description=curriculum_help(),
        formatter_class=_HelpFormatter,
    )
    if not is_torch_bf16_gpu_available():
        # `SFTConfig` defaults to bf16, which transformers refuses without a bf16 GPU; without any GPU, `use_cpu` is
        # what makes several launched processes join one gloo group.
        parser.set_defaults(bf16=False, use_cpu=not torch.cuda.is_available())
    if not _sets_model(argv):
        parser.set_defaults(**DEMO_TRAINING_DEFAULTS, **DEMO_MODEL_DEFAULTS, **DEMO_SCRIPT_DEFAULTS)
    return parser


def cli(argv: list[str] | None = None) -> dict:
    """Parse `argv` (the command line by default) and run; Ctrl-C ends with one line saying how to resume."""
    script_args, training_args, model_args = make_parser(argv).parse_args_and_config(args=argv)
    try:
        return main(script_args, training_args, model_args)
    except KeyboardInterrupt:
        # One line instead of a traceback: what was saved, and how to go on from it.
        print(
            f"\nInterrupted. Checkpoints in {training_args.output_dir} (one at the end of every finished stage with "
            "save_strategy='steps') resume the run: rerun the same command with --resume_from_checkpoint True.",
            file=sys.stderr,
        )
        sys.exit(130)


if __name__ == "__main__":
    cli()

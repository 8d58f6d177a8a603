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
Cost of `curriculum_difficulty="base_loss"`: scoring every training row (one forward pass per row, batched by length,
no gradients) against one epoch of training over the same rows with the same batch size. Goal: <= 0.4x on CPU.

Both sides use the rows exactly as the trainer prepared them (MATH train, tokenized once), the same tiny model and
batch size; the epoch is timed from its first step's start to its last step's end (optimizer steps only), the
scoring is the trainer's own `score_difficulty` on one process.

```bash
OMP_NUM_THREADS=1 python benchmarks/bench_difficulty.py              # writes benchmarks/results/difficulty.{md,json}
OMP_NUM_THREADS=1 python benchmarks/bench_difficulty.py --synthetic  # no MATH files needed (a smoke run)
```
"""

import argparse
import os
import statistics
import tempfile
import time

from common import (
    DEFAULT_MATH_TRAIN,
    LORA_TARGETS,
    RESULTS_DIR,
    StepClock,
    bench_config_kwargs,
    fmt,
    markdown_table,
    prompt_completion_rows,
    quiet_libraries,
    resolve_math_path,
    summarize,
    write_results,
)
from peft import LoraConfig

from trl_plrs import CurriculumSFTTrainer, PLRSConfig
from trl_plrs.testing import build_tiny_model, build_tokenizer


def build_trainer(rows, tokenizer, args, work_dir, clock=None) -> CurriculumSFTTrainer:
    return CurriculumSFTTrainer(
        build_tiny_model(tokenizer, hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers),
        args=PLRSConfig(
            # max_steps=-1: one epoch (`num_train_epochs`) decides the length.
            **bench_config_kwargs(work_dir, -1, args.batch_size, max_length=args.max_length),
            per_device_eval_batch_size=args.batch_size,
            num_train_epochs=1,
            # One stage over every row: the scoring below is timed on its own, "length" costs nothing here.
            curriculum_difficulty="length",
            curriculum_num_levels=1,
            lora_ranks=[16],
        ),
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, lora_dropout=0.0),
        callbacks=[clock] if clock is not None else None,
    )


def time_scoring(rows, tokenizer, args, work_dir) -> dict:
    trainer = build_trainer(rows, tokenizer, args, work_dir)
    trainer.args.curriculum_difficulty = "base_loss"
    start = time.perf_counter()
    scores = trainer.score_difficulty(trainer.curriculum_dataset, "train")
    return {"seconds": time.perf_counter() - start, "rows": len(scores)}


def time_epoch(rows, tokenizer, args, work_dir) -> dict:
    clock = StepClock()
    trainer = build_trainer(rows, tokenizer, args, work_dir, clock)
    trainer.train()
    lengths = [len(ids) for ids in trainer.curriculum_dataset["input_ids"]]
    return {
        "seconds": clock.end - clock.start,
        "steps": trainer.state.global_step,
        "rows": len(lengths),
        "mean_tokens": statistics.mean(lengths),
        "max_tokens": max(lengths),
    }


def to_markdown(results: dict) -> str:
    return "\n".join(
        [
            '# Difficulty scoring (`curriculum_difficulty="base_loss"`) against one epoch of training',
            "",
            f"{results['source']}: {results['rows']:,} rows as the trainer prepared them (mean "
            f"{results['mean_tokens']:.0f} tokens, max {results['max_tokens']:,}, `max_length={results['max_length']}`); "
            f"tiny Llama (hidden {results['hidden_size']}, {results['num_hidden_layers']} layers), LoRA r=16 on the 7 "
            f"projections, batch {results['batch_size']} on both sides; {results['repeats']} repeats (order "
            "alternating).",
            "",
            f"**Scoring / one epoch: {fmt(results['ratio'], digits=2)}** (goal <= 0.4).",
            "",
            markdown_table(
                ["", "seconds", "rows/s"],
                [
                    [
                        "scoring: one forward per row, no gradients, batched by length",
                        fmt(results["scoring_seconds"], digits=1),
                        fmt(results["scoring_rows_per_second"], digits=1),
                    ],
                    [
                        f"one epoch of training ({results['steps']} optimizer steps)",
                        fmt(results["epoch_seconds"], digits=1),
                        fmt(results["epoch_rows_per_second"], digits=1),
                    ],
                ],
            ),
            "",
            "Scoring costs a forward pass without the backward pass, the optimizer step or the adapter (it is "
            "disabled: the scores are the base model's), and batches rows of similar length, so it pads less than "
            "the training batches, which follow the shuffled order. Under `accelerate launch` each process scores "
            "its share of the rows.",
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--math_train_path", default=DEFAULT_MATH_TRAIN)
    parser.add_argument("--synthetic", action="store_true", help="Synthetic MATH-like rows (no MATH files needed).")
    parser.add_argument("--quick", action="store_true", help="200 rows, one repeat.")
    parser.add_argument("--rows", type=int, default=None, help="Rows of MATH train used (default 800).")
    parser.add_argument("--repeats", type=int, default=None, help="Repeats (default 3).")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_hidden_layers", type=int, default=2)
    parser.add_argument("--output_dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    for name, full, quick in (("rows", 800, 200), ("repeats", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    quiet_libraries()
    math_path = None
    if not args.synthetic:
        math_path = resolve_math_path(args.math_train_path)
        if math_path is None:
            print(f"Skipping: no MATH train file at {args.math_train_path} (use --synthetic for a smoke run).")
            return None
    rows, corpus = prompt_completion_rows(math_path, args.rows, keep_level=False)
    tokenizer = build_tokenizer(corpus=corpus)
    records = {"scoring": [], "epoch": []}
    ratios = []
    with tempfile.TemporaryDirectory() as work_dir:
        for repeat in range(args.repeats):
            order = ("scoring", "epoch") if repeat % 2 == 0 else ("epoch", "scoring")
            measured = {}
            for name in order:
                timer = time_scoring if name == "scoring" else time_epoch
                measured[name] = timer(rows, tokenizer, args, os.path.join(work_dir, f"{name}-{repeat}"))
                records[name].append(measured[name])
            ratios.append(measured["scoring"]["seconds"] / measured["epoch"]["seconds"])
            print(f"repeat {repeat + 1}/{args.repeats}: scoring / epoch {ratios[-1]:.3f}", flush=True)
    epoch = records["epoch"][0]
    results = {
        "source": "MATH train" if math_path else "synthetic MATH-like rows (smoke run)",
        "rows": epoch["rows"],
        "mean_tokens": epoch["mean_tokens"],
        "max_tokens": epoch["max_tokens"],
        "steps": epoch["steps"],
        **{
            key: getattr(args, key)
            for key in ("max_length", "hidden_size", "num_hidden_layers", "batch_size", "repeats")
        },
        "ratio": summarize(ratios),
        "scoring_seconds": summarize([record["seconds"] for record in records["scoring"]]),
        "epoch_seconds": summarize([record["seconds"] for record in records["epoch"]]),
        "scoring_rows_per_second": summarize([record["rows"] / record["seconds"] for record in records["scoring"]]),
        "epoch_rows_per_second": summarize([record["rows"] / record["seconds"] for record in records["epoch"]]),
        "records": records,
    }
    write_results("difficulty", to_markdown(results), results, args.output_dir)
    return results


if __name__ == "__main__":
    main()

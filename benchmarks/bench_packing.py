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
Training throughput with `packing=True` against the padded batches of `packing=False`, on the token lengths of the
MATH train split: the curriculum packs each stage's own rows with TRL's `pack_dataset` ("bfd": padding-free
sequences of up to `max_length` tokens). Both sides train the same tiny model, batch and number of optimizer steps;
throughput counts the real (non-padding) tokens trained per second. Goal: >= 1.4x on CPU.

The stage is the last of a full-replay curriculum (every level), as the paper's B4/B5 train it. The tokenizer is a
byte-level BPE trained locally on the MATH text, so rows are longer in tokens than with Llama's tokenizer; the ratio
depends on the spread of lengths within a batch, which packing removes.

```bash
OMP_NUM_THREADS=1 python benchmarks/bench_packing.py              # writes benchmarks/results/packing.{md,json}
OMP_NUM_THREADS=1 python benchmarks/bench_packing.py --synthetic  # no MATH files needed (a smoke run)
```
"""

import argparse
import os
import statistics
import tempfile

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


def run(rows, tokenizer, packing: bool, args, work_dir) -> dict:
    clock = StepClock()
    batch_size = args.packed_batch_size if packing else args.batch_size
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer, hidden_size=args.hidden_size, num_hidden_layers=2),
        args=PLRSConfig(
            **bench_config_kwargs(
                os.path.join(work_dir, f"packing-{packing}"), args.steps, batch_size, max_length=args.max_length
            ),
            packing=packing,
            # One stage over every level: the last stage of a full-replay curriculum.
            curriculum_stages=[",".join(str(level) for level in sorted(set(rows["level"])))],
            lora_ranks=[16],
            include_num_input_tokens_seen="non_padding",
        ),
        train_dataset=rows,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, lora_dropout=0.0),
        callbacks=[clock],
    )
    trainer.train()
    seconds = clock.end - clock.start
    sequences = trainer.train_dataset
    lengths = [len(ids) for ids in sequences["input_ids"]]
    row_lengths = [len(ids) for ids in trainer.curriculum_dataset["input_ids"]]
    return {
        "batch_size": batch_size,
        "row_tokens": {"mean": statistics.mean(row_lengths), "max": max(row_lengths)},
        "seconds": seconds,
        "tokens": clock.tokens,
        "tokens_per_second": clock.tokens / seconds,
        "sequences": len(sequences),
        "mean_sequence_tokens": statistics.mean(lengths),
    }


def to_markdown(results: dict) -> str:
    ratio = results["ratio"]
    lines = [
        "# Packing: real tokens per second, `packing=True` vs padded batches",
        "",
        f"{results['source']}: {results['rows']:,} rows (mean {results['mean_row_tokens']:.0f} tokens, max "
        f"{results['max_row_tokens']:,}; truncated to `max_length={results['max_length']}` without packing), one "
        f"stage over every level; tiny Llama (hidden {results['hidden_size']}, 2 layers), LoRA r=16 on the 7 "
        f"projections, {results['steps']} optimizer steps per run: batches of {results['batch_size']} padded rows "
        f"against batches of {results['packed_batch_size']} packed sequence(s) of up to {results['max_length']} tokens; "
        f"{results['repeats']} repeats (order alternating).",
        "",
        f"**Real tokens per second, packed / padded: {fmt(ratio, digits=2)}** (goal >= 1.4).",
        "",
        markdown_table(
            ["", "tokens/s", "sequences in the stage", "mean tokens per sequence"],
            [
                [
                    name,
                    fmt(results[key]["tokens_per_second"], digits=0),
                    results[key]["sequences"],
                    f"{results[key]['mean_sequence_tokens']:.0f}",
                ]
                for name, key in (("padded (`packing=False`)", "padded"), ("packed (`packing=True`, bfd)", "packed"))
            ],
        ),
        "",
        "Packing puts up to `max_length` tokens of several rows in one padding-free sequence (TRL's `bfd` strategy, "
        "with `position_ids` restarting per row so rows do not attend to each other), so a batch carries no padding; "
        "without it, each batch is padded to its longest row. Each stage packs only its own rows (its levels plus the "
        "replay), so packing never mixes stages.",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--math_train_path", default=DEFAULT_MATH_TRAIN)
    parser.add_argument("--synthetic", action="store_true", help="Synthetic MATH-like rows (no MATH files needed).")
    parser.add_argument("--quick", action="store_true", help="500 rows, 8 steps, one repeat.")
    parser.add_argument("--rows", type=int, default=None, help="Rows of MATH train used (default 2000).")
    parser.add_argument("--steps", type=int, default=None, help="Optimizer steps per run (default 20).")
    parser.add_argument("--repeats", type=int, default=None, help="Repeats (default 3).")
    parser.add_argument("--batch_size", type=int, default=4, help="Rows per batch without packing.")
    parser.add_argument(
        "--packed_batch_size", type=int, default=1, help="Packed sequences (of up to max_length tokens) per batch."
    )
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--output_dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)
    for name, full, quick in (("rows", 2000, 500), ("steps", 20, 8), ("repeats", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    quiet_libraries()
    math_path = None
    if not args.synthetic:
        math_path = resolve_math_path(args.math_train_path)
        if math_path is None:
            print(f"Skipping: no MATH train file at {args.math_train_path} (use --synthetic for a smoke run).")
            return None
    rows, corpus = prompt_completion_rows(math_path, args.rows)
    tokenizer = build_tokenizer(corpus=corpus)
    records = {"padded": [], "packed": []}
    ratios = []
    with tempfile.TemporaryDirectory() as work_dir:
        for repeat in range(args.repeats):
            order = ("padded", "packed") if repeat % 2 == 0 else ("packed", "padded")
            run_results = {}
            for name in order:
                run_results[name] = run(rows, tokenizer, name == "packed", args, work_dir)
                records[name].append(run_results[name])
            ratios.append(run_results["packed"]["tokens_per_second"] / run_results["padded"]["tokens_per_second"])
            print(f"repeat {repeat + 1}/{args.repeats}: ratio {ratios[-1]:.2f}", flush=True)
    results = {
        "source": "MATH train" if math_path else "synthetic MATH-like rows (smoke run)",
        "rows": len(rows),
        "mean_row_tokens": records["padded"][0]["row_tokens"]["mean"],
        "max_row_tokens": records["padded"][0]["row_tokens"]["max"],
        **{
            key: getattr(args, key)
            for key in ("max_length", "hidden_size", "batch_size", "packed_batch_size", "steps", "repeats")
        },
        "ratio": summarize(ratios),
        "records": records,
    }
    for name in ("padded", "packed"):
        results[name] = {
            "tokens_per_second": summarize([record["tokens_per_second"] for record in records[name]]),
            "sequences": records[name][0]["sequences"],
            "mean_sequence_tokens": records[name][0]["mean_sequence_tokens"],
        }
    write_results("packing", to_markdown(results), results, args.output_dir)
    return results


if __name__ == "__main__":
    main()

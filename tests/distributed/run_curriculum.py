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
Worker of the distributed tests: a 3-stage PLRS curriculum on a tiny model, writing one JSON report per rank that
`tests/test_distributed.py` asserts on. Launched as

```bash
OMP_NUM_THREADS=1 accelerate launch --config_file tests/distributed/ddp_cpu.yaml --main_process_port 29510 \
    tests/distributed/run_curriculum.py --base_dir <tiny model folder> --output_dir <out> --adapter_transition merge
```

or without a launcher (one process, the reference run of the DDP comparison). Everything the test needs from inside the
training processes is measured here, at the stage boundaries:

- `stage_begin`: at every stage's first step (after the transition AND after the engine re-wrapped the model):
  logits, trainable adapter names, the rank of the trainable adapter, and how many base weights are partitioned
  (ZeRO-3 shards them: a rank then holds no full copy of the weight);
- `stage_end`: at every stage's end: logits and a SHA-256 of the trainable parameters (gathered under ZeRO-3), which
  must be identical on every rank;
- `final_logits`: the trained model's logits, which the saved combined adapter must reproduce on the original base.

`--fsdp_on_cpu` applies the test-only shim `fsdp_on_cpu.py` (FSDP2 on CPU); `--save_steps`, `--kill_at_step`,
`--kill_after_transition_to` and `--resume` drive the kill-and-resume tests (rank 0 kills itself, the launcher ends
the job); `--eval_per_level` and `--load_in_4bit` add a per-level evaluation set and a 4-bit base.
"""

import argparse
import hashlib
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_plrs import (
    CurriculumCallback,
    CurriculumSFTTrainer,
    PLRSConfig,
    difficulty,  # its `base_loss_scores` is wrapped to count the rows each process scores
)
from trl_plrs.adapters import (
    DEFAULT_ADAPTER,
    FROZEN_ADAPTER,
    gathered_parameters,
    lora_layers,
    trainable_adapter_names,
)
from trl_plrs.fsdp import is_sharded
from trl_plrs.math.data import make_synthetic_math, to_prompt_completion
from trl_plrs.testing import KillSwitch


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROBE_PROBLEMS = ["What is 3 + 4?", "What is 47 - 18?", "What is 23 * 7?"]


def _full_shape(param: torch.nn.Parameter) -> tuple[int, ...]:
    return tuple(getattr(param, "ds_shape", param.shape))


def eval_logits(model, batch) -> list:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
    model.train(was_training)
    return logits.double().tolist()


def trainable_checksum(model) -> dict:
    """SHA-256 over the full values of the trainable parameters, in name order (gathered under ZeRO-3)."""
    named = sorted((name, param) for name, param in model.named_parameters() if param.requires_grad)
    digest = hashlib.sha256()
    total = 0.0
    with gathered_parameters([param for _, param in named], modify=False):
        for name, param in named:
            values = param.detach().to(torch.float32).contiguous().cpu()
            digest.update(name.encode())
            digest.update(values.numpy().tobytes())
            total += float(values.double().sum())
    return {"sha256": digest.hexdigest(), "sum": total, "count": len(named)}


class ReportCallback(CurriculumCallback):
    def __init__(self, batch):
        self.batch = batch
        self.trainer = None
        self.stage_begin, self.stage_end = [], []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        # At each stage's first step: after the engine wrapped the model for the stage.
        trainer = self.trainer
        if state.global_step != trainer.curriculum_state.stage_start_step:
            return
        model = trainer.model
        layers = [layer for layer in lora_layers(model) if DEFAULT_ADAPTER in layer.lora_A]
        base_weights = [layer.get_base_layer().weight for layer in lora_layers(model)]
        self.stage_begin.append(
            {
                "stage": trainer.curriculum_state.stage,
                "logits": eval_logits(model, self.batch),
                "trainable_adapters": sorted(trainable_adapter_names(model)),
                "adapters": sorted(model.peft_config),
                "default_ranks": sorted({_full_shape(layer.lora_A[DEFAULT_ADAPTER].weight)[0] for layer in layers}),
                "frozen_ranks": sorted(
                    {
                        _full_shape(layer.lora_A[FROZEN_ADAPTER].weight)[0]
                        for layer in layers
                        if FROZEN_ADAPTER in layer.lora_A
                    }
                ),
                "base_trainable": [
                    name for name, param in model.named_parameters() if param.requires_grad and ".lora_" not in name
                ],
                "base_weights": len(base_weights),
                # FSDP2 shards a weight as a `DTensor` of which each rank holds some rows.
                "sharded_base_weights": sum(1 for weight in base_weights if is_sharded(weight)),
                # A ZeRO-3 partitioned weight keeps an empty `.data`; its shard lives in `ds_tensor`.
                "partitioned_base_weights": sum(
                    1
                    for weight in base_weights
                    if hasattr(weight, "ds_id")
                    and weight.data.numel() == 0
                    and weight.ds_tensor.numel() < weight.ds_numel
                ),
                "rows": len(trainer.train_dataset),
            }
        )

    def on_stage_end(self, args, state, control, stage, model, **kwargs):
        self.stage_end.append(
            {
                "stage": stage.index,
                "global_step": state.global_step,
                "logits": eval_logits(model, self.batch),
                "checksum": trainable_checksum(model),
            }
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base_dir", required=True, help="Tiny model + tokenizer saved with `save_tiny_model`.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--adapter_transition", default="merge", choices=["merge", "stack", "auto"])
    parser.add_argument(
        "--bf16", action="store_true", help="bf16 mixed precision (autocast; FSDP2's MixedPrecisionPolicy)."
    )
    parser.add_argument("--per_device_train_batch_size", type=int, default=2)
    parser.add_argument("--max_steps", type=int, default=3)
    parser.add_argument("--lora_dropout", type=float, default=0.0)
    parser.add_argument(
        "--curriculum_difficulty", default=None, choices=["base_loss", "length"], help="Levels computed, not read."
    )
    parser.add_argument(
        "--deepspeed", default=None, help="A user's DeepSpeed JSON, passed as `PLRSConfig(deepspeed=...)`."
    )
    parser.add_argument(
        "--fsdp_on_cpu", action="store_true", help="Apply the test-only shim that lets accelerate run FSDP2 on CPU."
    )
    parser.add_argument("--save_steps", type=int, default=None, help="Save a checkpoint every N steps.")
    parser.add_argument("--kill_at_step", type=int, default=None, help="Rank 0 dies (SIGKILL) after this step.")
    parser.add_argument("--kill_after_transition_to", type=int, default=None, help="Rank 0 dies at this stage.")
    parser.add_argument("--resume", action="store_true", help="Resume from the newest checkpoint of `output_dir`.")
    parser.add_argument("--eval_per_level", action="store_true", help="Evaluate every level at each stage's end.")
    parser.add_argument("--load_in_4bit", action="store_true", help="A 4-bit NF4 base (QLoRA), stored in float32.")
    args = parser.parse_args()
    if args.fsdp_on_cpu:
        from fsdp_on_cpu import enable_fsdp_on_cpu

        enable_fsdp_on_cpu()

    # Loaded before the `PLRSConfig` exists: under ZeRO-3, transformers would otherwise partition the model while
    # loading it (`zero.Init`), and the trainer is the one that should do it.
    tokenizer = AutoTokenizer.from_pretrained(args.base_dir)
    quantization_config = None
    if args.load_in_4bit:
        from transformers import BitsAndBytesConfig

        quantization_config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.float32,
            bnb_4bit_quant_storage=torch.float32,  # a floating storage, which FSDP can shard
        )
    model = AutoModelForCausalLM.from_pretrained(
        args.base_dir, dtype=torch.float32, quantization_config=quantization_config
    )
    dataset = make_synthetic_math(num_per_level=8, levels=(1, 2, 3), seed=0).map(to_prompt_completion)
    scored_rows = []
    if args.curriculum_difficulty is not None:
        dataset = dataset.remove_columns("level")  # the levels are computed
        score = difficulty.base_loss_scores

        def counting_base_loss_scores(model, rows, **kwargs):
            scored_rows.append(len(rows))  # the rows this process scores
            return score(model, rows, **kwargs)

        difficulty.base_loss_scores = counting_base_loss_scores

    training_args = PLRSConfig(
        output_dir=args.output_dir,
        # Without a GPU, `use_cpu=True` is what makes accelerate pick gloo: otherwise each launched process silently
        # trains alone (`DistributedType.NO`) even under `accelerate launch --multi_gpu --num_processes 2`.
        use_cpu=not torch.cuda.is_available(),
        bf16=args.bf16,
        report_to="none",
        per_device_train_batch_size=args.per_device_train_batch_size,
        max_steps=args.max_steps,
        learning_rate=5e-3,
        warmup_steps=1,
        logging_steps=1,
        save_strategy="no" if args.save_steps is None else "steps",
        save_steps=args.save_steps or 500,
        disable_tqdm=True,
        seed=7,
        max_length=128,
        lora_ranks=[16, 8, 4],
        adapter_transition=args.adapter_transition,
        dataloader_num_workers=0,
        deepspeed=args.deepspeed,
        curriculum_difficulty=args.curriculum_difficulty,
        curriculum_num_levels=3,
    )
    batch = tokenizer(
        [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False) for p in PROBE_PROBLEMS],
        return_tensors="pt",
        padding=True,
    )
    from peft import LoraConfig

    report = ReportCallback(batch)
    callbacks = [report]
    if torch.distributed.is_initialized() and torch.distributed.get_rank() == 0:
        callbacks.append(KillSwitch(args.kill_at_step, args.kill_after_transition_to))
    trainer = CurriculumSFTTrainer(
        model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=make_synthetic_math(num_per_level=2, levels=(1, 2, 3), seed=1).map(to_prompt_completion)
        if args.eval_per_level
        else None,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=args.lora_dropout, target_modules=TARGETS),
        callbacks=callbacks,
    )
    report.trainer = trainer
    output = trainer.train(resume_from_checkpoint=True if args.resume else None)
    final_logits = eval_logits(trainer.model, batch)

    state = trainer.accelerator.state
    result = {
        "process_index": state.process_index,
        "num_processes": state.num_processes,
        "distributed_type": str(state.distributed_type),
        "zero_stage": training_args.deepspeed_plugin.zero_stage if training_args.deepspeed_plugin else None,
        "adapter_transition": trainer.adapter_transition,
        "stages": [
            {"index": stage.index, "levels": list(stage.levels), "lora_rank": stage.lora_rank}
            for stage in trainer.stages
        ],
        "stage_begin": report.stage_begin,
        "stage_end": report.stage_end,
        "stage_summaries": [summary.to_dict() for summary in trainer.stage_summaries],
        "final_logits": final_logits,
        "probe_batch": {key: value.tolist() for key, value in batch.items()},
        "train_loss": output.training_loss,
        "difficulty": trainer.difficulty,
        "row_levels": trainer.row_levels,
        "scored_rows": scored_rows,
        "global_step": output.global_step,
    }
    with open(os.path.join(args.output_dir, f"report-rank{state.process_index}.json"), "w") as file:
        json.dump(result, file)
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()

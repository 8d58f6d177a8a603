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
Exact-match evaluation on MATH: a base model plus an optional LoRA adapter, greedy batched generation, a predictions
CSV that resumes when re-run, and accuracy per level and subject in strict and symbolic modes.

# A base model + adapter on the MATH test split from the Hub (the paper's generation settings)
```bash
python examples/evaluate_math.py \
    --model_name_or_path meta-llama/Llama-3.2-1B-Instruct \
    --adapter_path outputs/plrs-llama-1b \
    --dataset_name EleutherAI/hendrycks_math \
    --split test \
    --batch_size 32 \
    --max_new_tokens 512 \
    --output_dir eval/plrs-llama-1b
```

# The same with vLLM (`pip install trl_plrs[vllm]`): the adapter is served with a LoRARequest
```bash
python examples/evaluate_math.py --backend vllm --model_name_or_path meta-llama/Llama-3.2-1B-Instruct \
    --adapter_path outputs/plrs-llama-1b --dataset_name EleutherAI/hendrycks_math --batch_size 256 --output_dir eval/vllm
```

# The same on 4 GPUs: each process generates a quarter of the problems; one predictions CSV, one summary
```bash
accelerate launch --num_processes 4 examples/evaluate_math.py --model_name_or_path meta-llama/Llama-3.2-1B-Instruct \
    --adapter_path outputs/plrs-llama-1b --dataset_name EleutherAI/hendrycks_math --output_dir eval/plrs-llama-1b
```

# A local copy of MATH (jsonl, json, or a folder of per-problem JSON files), first 100 problems
```bash
python examples/evaluate_math.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_path data/math/test.jsonl \
    --limit 100 \
    --output_dir eval/qwen-0.5b-base
```

# Re-score an existing predictions CSV without a model
```bash
python examples/evaluate_math.py --rescore_csv eval/plrs-llama-1b/predictions.csv
```

Arguments can also come from a YAML file: `python examples/evaluate_math.py --config eval.yaml`.
"""

import json
import os
from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import TrlParser

from trl_plrs.math.data import SYSTEM_PROMPT, load_math
from trl_plrs.math.evaluation import evaluate_math, read_evaluation_settings, rescore_predictions
from trl_plrs.math.grading import report_to_markdown


DEFAULT_DATASET = "EleutherAI/hendrycks_math"


@dataclass
class EvaluateArguments:
    """
    Arguments of `examples/evaluate_math.py`.

    Args:
        model_name_or_path (`str`, *optional*):
            Base model (Hub id or local folder). Default: the base the run at `adapter_path` recorded (in its
            `evaluation.json`, else its `adapter_config.json`). Not needed with `rescore_csv`.
        adapter_path (`str`, *optional*):
            PEFT adapter to load on top of the base model, e.g. a curriculum's `output_dir`. What that run recorded
            (`evaluation.json`: base model, system prompt, budget, test split) fills every argument not given; a given
            one that differs is used, with a line saying so.
        dataset_path (`str`, *optional*):
            Local MATH file or folder (`.jsonl`, `.json`, or per-problem JSON files).
        dataset_name (`str`, *optional*):
            Hub dataset, used when `dataset_path` is not set. Default: the run's test split, else
            `"EleutherAI/hendrycks_math"`.
        split (`str`, *optional*, defaults to `"test"`):
            Split to evaluate.
        batch_size (`int`, *optional*, defaults to `32`):
            Prompts per generation batch.
        max_new_tokens (`int`, *optional*):
            Generation budget per problem. Default: the run's, else 512 (the paper's).
        output_dir (`str`, *optional*):
            Folder of `predictions.csv`, `summary.json` and `summary.md`; re-running resumes from the CSV. Default:
            `eval`, or with `rescore_csv` the CSV's own folder.
        limit (`int`, *optional*):
            Evaluate only the first `limit` problems.
        rescore_csv (`str`, *optional*):
            Re-grade this predictions CSV (no model is loaded) and write the results to `output_dir`.
        dtype (`str`, *optional*, defaults to `"auto"`):
            Model dtype: `"auto"`, `"bfloat16"`, `"float16"` or `"float32"`.
        system_prompt (`str`, *optional*):
            System message; use the one the model was trained with. Default: the run's, else
            [`~trl_plrs.math.SYSTEM_PROMPT`].
        backend (`str`, *optional*, defaults to `"hf"`):
            `"hf"` (transformers' `generate`) or `"vllm"` (`pip install trl_plrs[vllm]`): the same prompts, greedy
            decoding and grading; vLLM serves the adapter with a `LoRARequest` (or merges it when its rank exceeds 512).
        max_model_len (`int`, *optional*, defaults to `4096`):
            With `backend="vllm"`: the longest prompt plus completion vLLM reserves memory for.
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Base model (Hub id or local folder). Default: the one the run at `adapter_path` recorded."},
    )
    adapter_path: str | None = field(
        default=None,
        metadata={
            "help": "PEFT adapter to load on the base model, e.g. a curriculum's `output_dir`, whose recorded "
            "evaluation settings (evaluation.json) are then the defaults."
        },
    )
    dataset_path: str | None = field(
        default=None, metadata={"help": "Local MATH file or folder (.jsonl, .json or per-problem JSON files)."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset, used when `dataset_path` is not set. Default: the run's recorded test split, "
            f"else {DEFAULT_DATASET}."
        },
    )
    split: str = field(default="test", metadata={"help": "Split to evaluate."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per generation batch."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Generation budget per problem. Default: the run's, else 512."}
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the predictions CSV and the summary. Default: `eval`, or beside `rescore_csv`."},
    )
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first `limit` problems."})
    rescore_csv: str | None = field(
        default=None, metadata={"help": "Re-grade this predictions CSV without a model, writing to `output_dir`."}
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "Model dtype.", "choices": ["auto", "bfloat16", "float16", "float32"]},
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message used in training. Default: the run's, else SYSTEM_PROMPT."}
    )
    backend: str = field(default="hf", metadata={"help": "Generation backend.", "choices": ["hf", "vllm"]})
    max_model_len: int = field(
        default=4096, metadata={"help": "backend=vllm: prompt + completion tokens per sequence."}
    )

    def __post_init__(self):
        if self.rescore_csv is None and self.model_name_or_path is None and self.adapter_path is None:
            raise ValueError(
                "`model_name_or_path` (or an `adapter_path` that records its base) is required unless `rescore_csv` is "
                "set (re-scoring needs no model)."
            )
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"`limit` must be a positive integer, but the value passed is {self.limit}.")


def with_run_settings(script_args: EvaluateArguments) -> EvaluateArguments:
    """
    The arguments with what the run at `adapter_path` recorded (`evaluation.json`) filling those not given; a given
    value that differs from the run's wins, with a line saying so. Without a record: the adapter's base model, the
    paper's system prompt and budget, MATH's test split.
    """
    recorded = read_evaluation_settings(script_args.adapter_path) if script_args.adapter_path else {}
    if script_args.adapter_path and not recorded.get("base_model"):
        config = os.path.join(script_args.adapter_path, "adapter_config.json")
        if os.path.isfile(config):
            with open(config) as file:
                recorded["base_model"] = json.load(file).get("base_model_name_or_path")

    def pick(name: str, given, from_run, fallback):
        if given is None:
            return from_run if from_run is not None else fallback
        if from_run is not None and given != from_run:
            print(
                f"--{name} {given!r} differs from the run's ({from_run!r}, {script_args.adapter_path}): using {given!r}."
            )
        return given

    test_split = recorded.get("test_split")
    if script_args.dataset_path is None and script_args.dataset_name is None:
        if isinstance(test_split, str):
            script_args.dataset_path = test_split
        elif isinstance(test_split, dict) and test_split.get("source"):
            script_args.dataset_path, script_args.split = test_split["source"], test_split.get("split", "test")
            script_args.limit = script_args.limit or test_split.get("limit")
    script_args.model_name_or_path = pick(
        "model_name_or_path", script_args.model_name_or_path, recorded.get("base_model"), None
    )
    script_args.system_prompt = pick(
        "system_prompt", script_args.system_prompt, recorded.get("system_prompt"), SYSTEM_PROMPT
    )
    script_args.max_new_tokens = pick(
        "max_new_tokens", script_args.max_new_tokens, recorded.get("max_new_tokens"), 512
    )
    if script_args.model_name_or_path is None:
        raise ValueError(
            f"No base model: {script_args.adapter_path} records none. Pass `--model_name_or_path` (the base the adapter "
            "was trained on)."
        )
    return script_args


def main(script_args: EvaluateArguments) -> dict:
    if script_args.rescore_csv is not None:
        output_dir = script_args.output_dir or os.path.dirname(os.path.abspath(script_args.rescore_csv))
        summary = rescore_predictions(script_args.rescore_csv, output_dir=output_dir)
        print(report_to_markdown(summary))
        return summary

    script_args = with_run_settings(script_args)
    source = script_args.dataset_path or script_args.dataset_name or DEFAULT_DATASET
    dataset = load_math(source, split=script_args.split)
    if script_args.limit is not None:
        dataset = dataset.select(range(min(script_args.limit, len(dataset))))

    tokenizer = AutoTokenizer.from_pretrained(script_args.model_name_or_path)
    # One device per process: under `accelerate launch --num_processes N` each generates its share of the problems.
    state = PartialState(cpu=not torch.cuda.is_available())  # on CPUs, several processes join one gloo group
    backend_kwargs = {}
    if script_args.backend == "vllm":
        model = script_args.model_name_or_path  # vLLM loads it (and the adapter) itself
        backend_kwargs = dict(
            backend="vllm",
            adapter_path=script_args.adapter_path,
            vllm_kwargs={"dtype": script_args.dtype, "max_model_len": script_args.max_model_len},
        )
    else:
        dtype = script_args.dtype if script_args.dtype == "auto" else getattr(torch, script_args.dtype)
        model = AutoModelForCausalLM.from_pretrained(script_args.model_name_or_path, dtype=dtype)
        if script_args.adapter_path is not None:
            from peft import PeftModel

            from trl_plrs.trainer_internals import quiet_peft_gradient_checkpointing_warning

            with quiet_peft_gradient_checkpointing_warning():  # PEFT's code reads a deprecated property
                model = PeftModel.from_pretrained(model, script_args.adapter_path)
        model = model.to(state.device)

    summary = evaluate_math(
        model,
        tokenizer,
        dataset,
        batch_size=script_args.batch_size,
        max_new_tokens=script_args.max_new_tokens,
        output_dir=script_args.output_dir or "eval",
        system_prompt=script_args.system_prompt,
        **backend_kwargs,
    )
    if state.is_main_process:
        print(report_to_markdown(summary))
    return summary


if __name__ == "__main__":
    parser = TrlParser(dataclass_types=[EvaluateArguments])
    (script_args,) = parser.parse_args_and_config()
    main(script_args)

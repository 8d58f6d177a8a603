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
Exact-match evaluation on MATH: batched greedy generation, a predictions CSV written as batches finish (an interrupted
run resumes), and a summary per level and subject in JSON and markdown.

>>> from trl_plrs.math import evaluate_math, rescore_predictions
>>> summary = evaluate_math(model, tokenizer, test_dataset, batch_size=32, output_dir="eval/run1")
>>> summary = rescore_predictions("eval/run1/predictions.csv")  # re-grade without a model
"""

import contextlib
import copy
import csv
import glob
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..checkpointing import atomic_path
from ..progress import bars_render
from .data import SYSTEM_PROMPT, build_prompt_messages
from .grading import GRADING_MODES, accuracy_report, extract_boxed_answer, grade_completion, report_to_markdown


logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = (
    "unique_id",
    "level",
    "type",
    "problem",
    "gold",
    "completion",
    "prediction",
    "correct_strict",
    "correct_symbolic",
)
PREDICTIONS_FILENAME = "predictions.csv"
# What each process of a data-parallel evaluation appends while generating; merged into `predictions.csv` at the end.
PART_FILENAME = "predictions.part-{rank}.csv"
PART_FILENAME_PATTERN = "predictions.part-*.csv"
SUMMARY_JSON_FILENAME = "summary.json"
SUMMARY_MARKDOWN_FILENAME = "summary.md"
# What evaluating a training run needs, recorded in its output folder (see `write_evaluation_settings`).
EVALUATION_SETTINGS_FILENAME = "evaluation.json"


@contextmanager
def _generation_ready(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> Iterator[None]:
    # Left padding keeps every prompt's last token next to its first generated token. A tokenizer without a pad token
    # (Llama 3) pads with eos; the attention mask hides it. Everything is restored afterwards.
    padding_side, pad_token, was_training = tokenizer.padding_side, tokenizer.pad_token, model.training
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    try:
        yield
    finally:
        tokenizer.padding_side = padding_side
        if pad_token is None:
            tokenizer.pad_token = None
        model.train(was_training)


def _greedy_generation_config(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int):
    generation_config = copy.deepcopy(model.generation_config)
    generation_config.update(
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        max_new_tokens=max_new_tokens,
        max_length=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    if generation_config.eos_token_id is None:
        generation_config.eos_token_id = tokenizer.eos_token_id
    return generation_config


def prompt_texts(tokenizer: PreTrainedTokenizerBase, problems: list[str], system_prompt: str | None) -> list[str]:
    """The prompt of each problem: the chat template with the system prompt and the generation prompt."""
    return [
        tokenizer.apply_chat_template(
            build_prompt_messages(problem, system_prompt), tokenize=False, add_generation_prompt=True
        )
        for problem in problems
    ]


def _vllm_completions(generator, tokenizer, problems, max_new_tokens, system_prompt, stop) -> list[str]:
    # The same prompt tokens as the Hugging Face path, and the same decoding of the new tokens.
    ids = tokenizer(prompt_texts(tokenizer, problems, system_prompt), add_special_tokens=False)["input_ids"]
    return tokenizer.batch_decode(generator.generate(ids, max_new_tokens, stop), skip_special_tokens=True)


def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[str],
    max_new_tokens: int = 512,
    system_prompt: str | None = SYSTEM_PROMPT,
) -> list[str]:
    """
    Greedy completions of one batch of problems: chat template with the generation prompt, LEFT padding, and only
    the new tokens decoded (never the prompt).

    Args:
        model ([`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            Causal LM.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizer with a chat template.
        problems (`list[str]`):
            Problem statements; one batch.
        max_new_tokens (`int`, *optional*, defaults to `512`):
            Generation budget per completion.
        system_prompt (`str` or `None`, *optional*, defaults to [`~trl_plrs.math.SYSTEM_PROMPT`]):
            System message, as used in training.
    """
    with _generation_ready(model, tokenizer):
        # The chat template already writes any special tokens (e.g. Llama 3's BOS); do not add them twice.
        inputs = tokenizer(
            prompt_texts(tokenizer, problems, system_prompt),
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        device = next(model.parameters()).device
        inputs = {key: value.to(device) for key, value in inputs.items()}
        with torch.inference_mode():
            outputs = model.generate(
                **inputs, generation_config=_greedy_generation_config(model, tokenizer, max_new_tokens)
            )
    new_tokens = outputs[:, inputs["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def _read_predictions(csv_path: str) -> list[dict[str, str]]:
    """Complete rows of a predictions CSV; a row cut short by an interruption is dropped (and rewritten away)."""
    if not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0:
        return []
    with open(csv_path, newline="", encoding="utf-8") as file:
        content = file.read()
        rows = list(csv.DictReader(content.splitlines(keepends=True)))
    complete = [
        row
        for row in rows
        if None not in row
        and all(row.get(column) is not None for column in PREDICTION_COLUMNS)
        and row["correct_symbolic"] in ("True", "False")
    ]
    if len(complete) != len(rows) or not content.endswith("\n"):
        logger.warning(f"Dropping {len(rows) - len(complete)} incomplete rows of {csv_path} (interrupted run).")
        _write_predictions(csv_path, complete)
    return complete


def _write_predictions(csv_path: str, rows: list[dict]) -> None:
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=PREDICTION_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _write_summary(output_dir: str, rows: list[dict], extra: dict | None = None) -> dict:
    report = accuracy_report(rows)
    summary = {**(extra or {}), **report}
    with atomic_path(os.path.join(output_dir, SUMMARY_JSON_FILENAME)) as tmp, open(tmp, "w", encoding="utf-8") as file:
        json.dump(summary, file, indent=2)
    with (
        atomic_path(os.path.join(output_dir, SUMMARY_MARKDOWN_FILENAME)) as tmp,
        open(tmp, "w", encoding="utf-8") as file,
    ):
        file.write(report_to_markdown(report))
    return summary


def evaluate_math(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    batch_size: int = 32,
    max_new_tokens: int = 512,
    output_dir: str | None = None,
    system_prompt: str | None = SYSTEM_PROMPT,
    show_progress: bool = True,
    progress_label: str = "Generating",
    shard_across_processes: bool | None = None,
    backend: str = "hf",
    adapter_path: str | None = None,
    vllm_kwargs: dict | None = None,
) -> dict:
    """
    Exact-match accuracy of a model on MATH-like rows, in strict and symbolic modes, overall, per level and per subject.

    Generation is greedy and batched with left padding (the same completions as one-by-one generation), longest
    prompts first (batches of similar lengths pad less). Under `accelerate launch --num_processes N` the problems are
    split across the processes (every n-th of that order), each generates its share, and every process returns the
    report of all rows; the main process writes ONE `<output_dir>/predictions.csv`, in the dataset's order, with the
    columns `unique_id, level, type, problem, gold, completion, prediction, correct_strict, correct_symbolic`, and the
    summary `summary.json` and `summary.md` beside it: the same files as one process writes. While generating, each
    finished batch is appended (and flushed) to that CSV, or with several processes to `predictions.part-<rank>.csv`;
    rows already in either are skipped, so an interrupted evaluation resumes, with any number of processes.

    Args:
        model ([`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            Causal LM; it is put in eval mode during generation and its training mode restored afterwards.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizer with a chat template; its padding side is set to left during generation and restored.
        dataset ([`~datasets.Dataset`]):
            Rows with `problem`, `answer` (or `solution`), `level` and `type`; `unique_id` if present (else the row
            index is used), e.g. from [`~trl_plrs.math.load_math`].
        batch_size (`int`, *optional*, defaults to `32`):
            Prompts per generation batch.
        max_new_tokens (`int`, *optional*, defaults to `512`):
            Generation budget per completion (the paper's value).
        output_dir (`str`, *optional*):
            Folder of the predictions CSV and the summary. Without it nothing is written and nothing resumes.
        system_prompt (`str` or `None`, *optional*, defaults to [`~trl_plrs.math.SYSTEM_PROMPT`]):
            System message; use the one the model was trained with.
        show_progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar over batches.
        progress_label (`str`, *optional*, defaults to `"Generating"`):
            Label of that bar.
        backend (`str`, *optional*, defaults to `"hf"`):
            `"hf"`: transformers' `generate` on `model`. `"vllm"`: vLLM (`pip install trl_plrs[vllm]`), with `model`
            the base model's hub id or path and `adapter_path` an optional LoRA adapter for it; the same prompts,
            greedy decoding and grading (see [`~trl_plrs.math.vllm_backend.VLLMGenerator`]).
        adapter_path (`str`, *optional*):
            With `backend="vllm"`: a PEFT LoRA adapter of `model`, e.g. a curriculum's `output_dir`.
        vllm_kwargs (`dict`, *optional*):
            With `backend="vllm"`: more arguments of `vllm.LLM` (`dtype`, `max_model_len`, `gpu_memory_utilization`...).
        shard_across_processes (`bool`, *optional*):
            Split the problems across the processes of a distributed run (the default when there are several). `False`:
            every process generates every problem, e.g. under DeepSpeed ZeRO-3, where every forward pass needs every
            process.

    Returns:
        `dict`: The [`~trl_plrs.math.grading.accuracy_report`] of all rows of `dataset`, plus `num_generated` (rows generated
        in this call) and `num_resumed` (rows read back from the CSV).
    """
    _check_evaluation_arguments(model, dataset, batch_size, max_new_tokens, backend, adapter_path)
    rows = _ProblemRows.of(dataset)
    state = PartialState()
    sharded = state.num_processes > 1 and shard_across_processes is not False
    results = _resumed_rows(output_dir, rows.unique_ids, sharded)
    todo = [index for index, unique_id in enumerate(rows.unique_ids) if unique_id not in results]
    if results:
        logger.info(f"Resuming: {len(results)} rows already in {output_dir}, {len(todo)} to generate.")
    # Longest prompts first: a batch of similar lengths pads less, and the slowest batches start first. Every process
    # takes every n-th prompt of that order, so the shares are balanced.
    todo.sort(key=lambda index: -len(rows.problems[index]))
    mine = todo[state.process_index :: state.num_processes] if sharded else todo
    # Each process appends its rows as batches finish: to the CSV itself, or to its part file when sharded.
    name = PART_FILENAME.format(rank=state.process_index) if sharded else PREDICTIONS_FILENAME
    part_path = os.path.join(output_dir, name) if output_dir is not None else None
    generate = _completion_generator(
        model, tokenizer, max_new_tokens, system_prompt, backend, adapter_path, vllm_kwargs, mine
    )
    with _appending_predictions(part_path) as append, generate as complete:
        new_rows = []
        batches = [mine[start : start + batch_size] for start in range(0, len(mine), batch_size)]
        for batch in tqdm(batches, desc=progress_label, unit="batch", disable=not (show_progress and bars_render())):
            graded = rows.graded(batch, complete([rows.problems[index] for index in batch]))
            append(graded)
            new_rows += graded
    if sharded:
        new_rows = gather_object(new_rows)  # every process gets every row, in rank order
    results.update({row["unique_id"]: row for row in new_rows})
    ordered = [results[unique_id] for unique_id in rows.unique_ids]
    extra = {"num_generated": len(todo), "num_resumed": len(rows.unique_ids) - len(todo)}
    writes = output_dir is not None and (state.is_main_process or not sharded)
    report = _write_final_files(output_dir, ordered, extra) if writes else {**extra, **accuracy_report(ordered)}
    if sharded:
        state.wait_for_everyone()
    return report


def _check_evaluation_arguments(model, dataset, batch_size, max_new_tokens, backend, adapter_path) -> None:
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, but the value passed is {batch_size}.")
    if backend not in ("hf", "vllm"):
        raise ValueError(f"`backend` must be 'hf' or 'vllm', but the value passed is {backend!r}.")
    if backend == "vllm" and not isinstance(model, str):
        raise ValueError(
            "`backend='vllm'` loads the model itself: pass `model` as the base model's hub id or path, and the LoRA "
            f"adapter as `adapter_path` (got a `{type(model).__name__}`)."
        )
    if backend == "hf" and isinstance(model, str):
        raise ValueError(
            f"`backend='hf'` generates with a loaded model, but `model` is the string {model!r}: load it with "
            "`AutoModelForCausalLM.from_pretrained` (and `PeftModel.from_pretrained` for an adapter), or use "
            "`backend='vllm'`."
        )
    if adapter_path is not None and backend != "vllm":
        raise ValueError("`adapter_path` is for `backend='vllm'`; with 'hf', load the adapter into `model`.")
    if max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be a positive integer, but the value passed is {max_new_tokens}.")
    if "problem" not in dataset.column_names or not {"answer", "solution"} & set(dataset.column_names):
        raise ValueError(
            f"`dataset` needs a `problem` column and an `answer` or `solution` column, but has {dataset.column_names}. "
            "Load it with `trl_plrs.data.load_math`."
        )


@dataclass
class _ProblemRows:
    """The columns of the evaluated rows that the predictions CSV carries, and the grading of completions."""

    unique_ids: list[str]
    golds: list[str]
    levels: list
    types: list
    problems: list[str]

    @classmethod
    def of(cls, dataset: Dataset) -> "_ProblemRows":
        columns = dataset.column_names
        unique_ids = (
            [str(value) for value in dataset["unique_id"]]
            if "unique_id" in columns
            else [str(i) for i in range(len(dataset))]
        )
        if len(set(unique_ids)) != len(unique_ids):
            raise ValueError("`dataset` has duplicate `unique_id` values; they must be unique for the CSV to resume.")
        golds = (
            list(dataset["answer"])
            if "answer" in columns
            else [extract_boxed_answer(solution) for solution in dataset["solution"]]
        )
        levels = dataset["level"] if "level" in columns else [""] * len(dataset)
        types = dataset["type"] if "type" in columns else [""] * len(dataset)
        return cls(unique_ids, golds, levels, types, dataset["problem"])

    def graded(self, indices: list[int], completions: list[str]) -> list[dict]:
        return [
            {
                "unique_id": self.unique_ids[index],
                "level": self.levels[index],
                "type": self.types[index],
                "problem": self.problems[index],
                "gold": self.golds[index],
                "completion": completion,
                **grade_completion(completion, self.golds[index]),
            }
            for index, completion in zip(indices, completions, strict=True)
        ]


def _resumed_rows(output_dir: str | None, unique_ids: list[str], sharded: bool) -> dict[str, dict]:
    """The rows of `unique_ids` already in `output_dir`'s CSV or in the part files of an interrupted sharded run."""
    done: dict[str, dict] = {}
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        csv_path = os.path.join(output_dir, PREDICTIONS_FILENAME)
        for path in [csv_path, *sorted(glob.glob(os.path.join(output_dir, PART_FILENAME_PATTERN)))]:
            done.update({row["unique_id"]: row for row in _read_predictions(path)})
    wanted = set(unique_ids)
    results = {uid: row for uid, row in done.items() if uid in wanted}
    # The main process's view of what is done decides every process's share.
    return broadcast_object_list([results])[0] if sharded else results


@contextlib.contextmanager
def _completion_generator(model, tokenizer, max_new_tokens, system_prompt, backend, adapter_path, vllm_kwargs, mine):
    """A `problems -> completions` function of the chosen backend (vLLM is started only if there is work)."""
    if backend != "vllm" or not mine:
        yield lambda problems: generate_completions(model, tokenizer, problems, max_new_tokens, system_prompt)
        return
    from .vllm_backend import VLLMGenerator, stop_token_ids

    generator = VLLMGenerator(model, adapter_path=adapter_path, **(vllm_kwargs or {}))
    stop = stop_token_ids(_generation_eos(model), tokenizer)
    try:
        yield lambda problems: _vllm_completions(generator, tokenizer, problems, max_new_tokens, system_prompt, stop)
    finally:
        generator.close()


def _write_final_files(output_dir: str, ordered: list[dict], extra: dict) -> dict:
    """One CSV in the dataset's order (rows were appended as batches finished), the part files removed, the summary."""
    _write_predictions(os.path.join(output_dir, PREDICTIONS_FILENAME), ordered)
    for path in glob.glob(os.path.join(output_dir, PART_FILENAME_PATTERN)):
        os.remove(path)
    return _write_summary(output_dir, ordered, extra)


def _generation_eos(model_name_or_path: str):
    """The end-of-sequence id(s) of a saved model's generation config (`None` without one)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_name_or_path).eos_token_id
    except OSError:
        return None


@contextmanager
def _appending_predictions(csv_path: str | None) -> Iterator:
    """A function that appends rows to `csv_path` (header first if new), flushed and synced; a no-op without a path."""
    if csv_path is None:
        yield lambda rows: None
        return
    new_file = not os.path.exists(csv_path) or os.path.getsize(csv_path) == 0
    with open(csv_path, "a", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=PREDICTION_COLUMNS)
        if new_file:
            writer.writeheader()

        def append(rows):
            writer.writerows(rows)
            file.flush()
            os.fsync(file.fileno())

        yield append


def rescore_predictions(csv_path: str, output_dir: str | None = None) -> dict:
    """
    Re-grade an existing predictions CSV without a model: the answer is extracted again from each `completion` and
    compared with `gold` in every mode (what the paper's `exact_match_accuracy.ipynb` did, with today's grader).

    Args:
        csv_path (`str`):
            A predictions CSV written by [`evaluate_math`] (or any CSV with at least `completion` and `gold`).
        output_dir (`str`, *optional*):
            Where to write the re-graded `predictions.csv`, `summary.json` and `summary.md`. Defaults to the folder of
            `csv_path` (the CSV is then rewritten in place, atomically).

    Returns:
        `dict`: The [`~trl_plrs.math.grading.accuracy_report`] of the re-graded rows.
    """
    if not os.path.isfile(csv_path):
        raise ValueError(f"`csv_path` must be an existing predictions CSV, but {csv_path!r} does not exist.")
    with open(csv_path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    if rows and not {"completion", "gold"} <= set(rows[0]):
        raise ValueError(
            f"`csv_path` {csv_path!r} must have `completion` and `gold` columns, but has {list(rows[0])}."
        )
    regraded = []
    for index, row in enumerate(rows):
        gold = row["gold"] if row["gold"] != "" else None
        regraded.append(
            {
                "unique_id": row.get("unique_id") or str(index),
                "level": row.get("level", ""),
                "type": row.get("type", ""),
                "problem": row.get("problem", ""),
                "gold": row["gold"],
                "completion": row["completion"],
                **grade_completion(row["completion"], gold),
            }
        )
    output_dir = output_dir if output_dir is not None else os.path.dirname(os.path.abspath(csv_path))
    os.makedirs(output_dir, exist_ok=True)
    _write_predictions(os.path.join(output_dir, PREDICTIONS_FILENAME), regraded)
    return _write_summary(output_dir, regraded, {"num_rescored": len(regraded), "modes": list(GRADING_MODES)})


def write_evaluation_settings(
    run_dir: str,
    base_model: str,
    system_prompt: str | None,
    max_new_tokens: int,
    test_split: str | dict | None,
) -> str:
    """
    Record in a training run's folder what evaluating it needs: the base model (a path inside `run_dir` is recorded
    relative to it, so the folder can move), the system prompt it trained with, the generation budget, and where its
    test split is (a file inside `run_dir`, relative, or `{"source": ..., "split": ..., "limit": ...}`).
    `examples/evaluate_math.py --adapter_path RUN_DIR` uses them by default. Returns the file's path.
    """
    from ..checkpointing import write_json_atomic

    root = os.path.abspath(run_dir)

    def relative(value):
        """A local path inside `run_dir`, relative to it; anything else (a hub id, a path elsewhere) as given."""
        if not (isinstance(value, str) and os.path.exists(value)):
            return value
        absolute = os.path.abspath(value)
        return os.path.relpath(absolute, root) if os.path.commonpath([absolute, root]) == root else absolute

    path = os.path.join(run_dir, EVALUATION_SETTINGS_FILENAME)
    settings = {
        "base_model": relative(base_model),
        "system_prompt": system_prompt,
        "max_new_tokens": max_new_tokens,
        "test_split": relative(test_split),
    }
    write_json_atomic(path, settings)
    return path


def read_evaluation_settings(run_dir: str) -> dict:
    """
    The settings [`write_evaluation_settings`] recorded in `run_dir`, with paths inside it resolved against it (so a
    moved or copied folder still finds its base model and test split); `{}` when there are none.
    """
    path = os.path.join(run_dir, EVALUATION_SETTINGS_FILENAME)
    if not os.path.isfile(path):
        return {}
    from ..checkpointing import read_json

    settings = read_json(path)
    for name in ("base_model", "test_split"):
        value = settings.get(name)
        if isinstance(value, str) and not os.path.isabs(value) and os.path.exists(os.path.join(run_dir, value)):
            settings[name] = os.path.join(run_dir, value)
    return settings

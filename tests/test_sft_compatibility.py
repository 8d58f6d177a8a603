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
Drop-in for `SFTTrainer`: after `train()`, every public way of getting the model out gives the whole curriculum
(`save_model`, `push_to_hub` with the hub client patched, `trainer.model.save_pretrained`, `merge_and_unload`,
`evaluate`), `evaluate()` returns what `SFTTrainer.evaluate()` returns, the user's LoRA alpha is kept, a stop request
ends the curriculum, and what cannot be carried across stages is refused at construction.
"""

import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from trl_plrs import CurriculumCallback, CurriculumSFTTrainer
from trl_plrs.adapters import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, concatenate_lora_adapters
from trl_plrs.testing import build_tiny_model, build_tokenizer
from trl_plrs.transitions import stage_dir

from .conftest import make_leveled_dataset
from .test_plrs_trainer import lora_config, make_args


RANKS = [16, 8, 4]
LOGITS_ATOL = 1e-4


def probe(tokenizer):
    return tokenizer(["What is 3 + 4?", "What is 12 + 30?"], return_tensors="pt", padding=True)


def logits(model, batch):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(**batch).logits.float()
    model.train(was_training)
    return out


class LogitsAtLastStageEnd(TrainerCallback):
    """The live model's logits when the last stage ends, before the trainer swaps in the combined adapter."""

    def __init__(self, batch, stages):
        self.batch, self.stages, self.value = batch, stages, None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == state.max_steps and state.max_steps == self.stages * args.max_steps:
            self.value = logits(model, self.batch)


def train(tmp_path, tokenizer, dtype=torch.float32, callbacks=(), **kwargs):
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer, dtype=dtype),
        args=make_args(tmp_path, **kwargs),
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(lora_dropout=0.0),
        callbacks=list(callbacks),
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize(
    "dtype, kwargs, transition",
    [
        (torch.float32, {"adapter_transition": "merge"}, "merge"),
        (torch.float32, {"adapter_transition": "stack"}, "stack"),
        (torch.bfloat16, {"bf16": True}, "fp32_merge"),
    ],
)
def test_every_way_out_gives_the_whole_curriculum(tmp_path, tokenizer, dtype, kwargs, transition):
    batch = probe(tokenizer)
    at_end = LogitsAtLastStageEnd(batch, stages=len(RANKS))
    base_before = build_tiny_model(tokenizer, dtype=dtype).state_dict()
    trainer = train(tmp_path, tokenizer, dtype=dtype, callbacks=[at_end], **kwargs)
    assert trainer.adapter_transition == transition
    model = trainer.model

    # `trainer.model` is the original base with the combined adapter as its only adapter, "default".
    assert list(model.peft_config) == ["default"]
    assert model.peft_config["default"].r == sum(RANKS)
    for name, value in model.get_base_model().state_dict().items():
        if ".lora_" in name:
            continue
        original = base_before[name.replace(".base_layer", "")]
        assert value.dtype == original.dtype, name  # fp32_merge's upcast weights are back in bf16
        # Merged stages were subtracted again: the base is the original up to float rounding (exact in stack mode).
        atol = 0 if transition == "stack" else (1e-6 if dtype == torch.float32 else 0)
        torch.testing.assert_close(value, original, rtol=0, atol=atol, msg=name)
    # ... with the same function as the live model had at the end of the last stage.
    tolerance = LOGITS_ATOL if dtype == torch.float32 else 0.05
    torch.testing.assert_close(logits(model, batch), at_end.value, rtol=0, atol=tolerance)

    # trainer.model.save_pretrained(d) saves the whole curriculum: the same adapter as `output_dir`.
    saved_dir = str(tmp_path / "save_pretrained")
    model.save_pretrained(saved_dir)
    saved, exported = (load_file(os.path.join(d, ADAPTER_WEIGHTS_NAME)) for d in (saved_dir, trainer.args.output_dir))
    assert saved.keys() == exported.keys()
    for key in saved:
        torch.testing.assert_close(saved[key].float(), exported[key].float(), rtol=0, atol=0)

    # merge_and_unload gives the base + every stage.
    merged = PeftModel.from_pretrained(build_tiny_model(tokenizer, dtype=dtype), saved_dir).merge_and_unload()
    torch.testing.assert_close(logits(merged, batch), at_end.value, rtol=0, atol=tolerance)

    # evaluate() runs on the whole curriculum.
    assert "eval_loss" in trainer.evaluate(eval_dataset=make_leveled_dataset(rows_per_level=2))


def test_push_to_hub_uploads_the_whole_curriculum(tmp_path, tokenizer, monkeypatch):
    trainer = train(tmp_path, tokenizer)
    uploads = []

    class FakeHub:
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=f"user/{repo_id.split('/')[-1]}")

        def upload_folder(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
            snapshot = str(tmp_path / f"uploaded-{len(uploads)}")
            shutil.copytree(folder_path, snapshot, ignore=shutil.ignore_patterns(*ignore_patterns))
            uploads.append((repo_id, snapshot))

    monkeypatch.setattr("transformers.trainer.hf_api", lambda: FakeHub())
    trainer.push_to_hub()  # nothing leaves the machine: the hub client is the fake above

    ((repo_id, uploaded),) = uploads
    assert repo_id == f"user/{os.path.basename(trainer.args.output_dir)}"
    with open(os.path.join(uploaded, ADAPTER_CONFIG_NAME)) as file:
        assert f'"r": {sum(RANKS)}' in file.read()
    expected_dir = str(tmp_path / "expected")
    concatenate_lora_adapters([stage_dir(trainer.args.output_dir, k) for k in range(1, len(RANKS) + 1)], expected_dir)
    uploaded_weights = load_file(os.path.join(uploaded, ADAPTER_WEIGHTS_NAME))
    for key, value in load_file(os.path.join(expected_dir, ADAPTER_WEIGHTS_NAME)).items():
        torch.testing.assert_close(uploaded_weights[key], value, rtol=0, atol=0)
    with open(os.path.join(uploaded, "README.md")) as file:
        card = file.read()
    assert "https://openreview.net/forum?id=Pf7sa41jkz" in card and "@inproceedings{plrs2025" in card
    assert "huggingface.co/papers/" not in card  # the paper has no Hugging Face papers page
    assert "| stage | levels | rows | rank | alpha | steps | train loss |" in card
    assert "| 3 | 3 |" in card


def test_save_model_writes_the_files_sft_trainer_writes(tmp_path, tokenizer):
    trainer = train(tmp_path, tokenizer, max_steps=1)
    out = str(tmp_path / "saved")
    trainer.save_model(out)
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, "README.md", "training_args.bin", "tokenizer.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "README.md")) as file:
        card = file.read()
    assert "### Curriculum" in card
    # A base built in memory (or loaded from a folder) and a model not pushed are named, never `None`.
    assert "None" not in card
    assert "fine-tuned version of `LlamaForCausalLM` (a local model)" in card
    assert f"model={trainer.args.output_dir!r}" in card


def test_evaluate_returns_what_sft_trainer_returns(tmp_path, tokenizer):
    eval_rows = make_leveled_dataset(rows_per_level=2)
    sft = SFTTrainer(
        build_tiny_model(tokenizer),
        args=SFTConfig(str(tmp_path / "sft"), use_cpu=True, bf16=False, report_to="none", max_steps=1),
        train_dataset=make_leveled_dataset(),
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    curriculum = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path / "curriculum", stage_eval_per_level=False),
        train_dataset=make_leveled_dataset(),
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    sft_metrics, metrics = sft.evaluate(), curriculum.evaluate()
    assert {"eval_mean_token_accuracy", "eval_entropy", "eval_num_tokens"} <= set(sft_metrics)
    assert set(sft_metrics) <= set(metrics)
    assert {"stage", "lora_rank"} <= set(metrics)


def selecting_the_best_model(tmp_path, tokenizer, metric_for_best_model, **kwargs):
    """A curriculum that evaluates and saves at every step and continues each stage from its best checkpoint."""
    return CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(
            tmp_path,
            eval_strategy="steps",
            eval_steps=1,
            save_strategy="steps",
            save_steps=1,
            load_best_model_at_end=True,
            metric_for_best_model=metric_for_best_model,
            **kwargs,
        ),  # fmt: skip
        train_dataset=make_leveled_dataset(),
        eval_dataset=make_leveled_dataset(rows_per_level=2),
        processing_class=tokenizer,
        peft_config=lora_config(),
    )


def test_metric_for_best_model_on_a_trl_metric(tmp_path, tokenizer):
    trainer = selecting_the_best_model(tmp_path, tokenizer, "eval_mean_token_accuracy", early_stopping_patience=2)
    trainer.train()  # TRL's metric reaches metric_for_best_model and early stopping (a KeyError before)
    assert trainer.state.best_metric is not None
    assert len(trainer.stage_summaries) == len(RANKS)


def test_a_stop_request_ends_the_curriculum(tmp_path, tokenizer, caplog):
    class StopInStageOne(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:  # stage 2's first step (3 steps per stage)
                control.should_training_stop = True

    batch = probe(tokenizer)
    with caplog.at_level("WARNING"):
        trainer = train(tmp_path, tokenizer, callbacks=[StopInStageOne()])
    assert trainer.state.global_step == 4
    assert [summary.stage for summary in trainer.stage_summaries] == [1, 2]
    assert not os.path.exists(stage_dir(trainer.args.output_dir, 3))
    assert "the curriculum ends here" in caplog.text and "stages 3-3 were not trained" in caplog.text
    # The combined adapter holds what was trained (stages 1 and 2) and reproduces the model.
    assert trainer.model.peft_config["default"].r == RANKS[0] + RANKS[1]
    reloaded = PeftModel.from_pretrained(build_tiny_model(tokenizer), trainer.args.output_dir)
    torch.testing.assert_close(logits(reloaded, batch), logits(trainer.model, batch), rtol=0, atol=LOGITS_ATOL)


def test_lora_alpha_of_the_config_is_kept(tmp_path, tokenizer):
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, lora_ranks=None, max_steps=1),
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(r=8, lora_alpha=32),
    )
    assert [(stage.lora_rank, stage.lora_alpha) for stage in trainer.stages] == [(8, 32.0)] * 3
    shrinking = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path / "shrink", lora_ranks=[16, 8, 4], max_steps=1),
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(r=8, lora_alpha=32),
    )
    assert [stage.lora_alpha for stage in shrinking.stages] == [64.0, 32.0, 16.0]  # alpha = 4r, the config's ratio


def test_chat_template_that_adds_tokens_is_refused_at_construction(tmp_path):
    tokenizer = build_tokenizer()
    source = build_tokenizer()
    source.add_special_tokens({"additional_special_tokens": ["<|tool_call|>", "<|tool_result|>"]})
    source_dir = str(tmp_path / "template_source")
    source.save_pretrained(source_dir)
    with pytest.raises(ValueError, match="made .* trainable beside the first stage's LoRA adapter"):
        CurriculumSFTTrainer(
            build_tiny_model(tokenizer),
            args=make_args(tmp_path, chat_template_path=source_dir),
            train_dataset=make_leveled_dataset(),
            processing_class=tokenizer,
            peft_config=lora_config(),
        )


@pytest.mark.parametrize(
    "lora_kwargs, match",
    [
        ({"init_lora_weights": "pissa"}, "`peft_config.init_lora_weights` is 'pissa'"),
        ({"init_lora_weights": False}, "`peft_config.init_lora_weights` is False"),
        ({"init_lora_weights": "orthogonal"}, "`peft_config.init_lora_weights` is 'orthogonal'"),
        ({"target_modules": ["q_proj", "embed_tokens"]}, r"targets layers of type \['Embedding'\]"),
        ({"trainable_token_indices": [1, 2]}, "`peft_config.trainable_token_indices` is not supported"),
    ],
)
def test_what_cannot_be_carried_across_stages_is_refused(tmp_path, tokenizer, lora_kwargs, match):
    with pytest.raises(ValueError, match=match):
        CurriculumSFTTrainer(
            build_tiny_model(tokenizer),
            args=make_args(tmp_path),
            train_dataset=make_leveled_dataset(),
            processing_class=tokenizer,
            peft_config=lora_config(**lora_kwargs),
        )


def test_lm_head_target_is_refused_at_construction(tmp_path, tokenizer):
    # TRL 1.16 refuses it itself (its loss reads `lm_head.weight` directly); a merge would also change tied embeddings.
    with pytest.raises(ValueError, match="Applying a PEFT adapter to `lm_head` is not supported"):
        CurriculumSFTTrainer(
            build_tiny_model(tokenizer),
            args=make_args(tmp_path),
            train_dataset=make_leveled_dataset(),
            processing_class=tokenizer,
            peft_config=lora_config(target_modules=["q_proj", "lm_head"]),
        )


def test_eval_packing_warns_that_per_level_evaluation_is_off(tmp_path, tokenizer, caplog):
    with caplog.at_level("WARNING"):
        CurriculumSFTTrainer(
            build_tiny_model(tokenizer),
            args=make_args(tmp_path, eval_packing=True, max_length=64),
            train_dataset=make_leveled_dataset(),
            eval_dataset=make_leveled_dataset(rows_per_level=2),
            processing_class=tokenizer,
            peft_config=lora_config(),
        )
    assert "`eval_packing=True` packed the `eval_dataset`" in caplog.text


def test_train_output_reports_what_sft_trainer_reports(tmp_path, tokenizer):
    # No log between steps (TRL's tests keep the default `logging_steps`): TRL's per-batch metrics reach the last entry.
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, max_steps=1, logging_steps=10),
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(),
    )
    output = trainer.train()
    expected = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}
    assert expected | {"epoch"} <= set(output.metrics)
    assert output.metrics["train_loss"] == pytest.approx(output.training_loss)
    last = trainer.state.log_history[-1]
    assert last["train_loss"] == pytest.approx(output.training_loss)
    # The log's tail has `SFTTrainer`'s shape: one training summary, carrying TRL's per-batch metrics.
    assert {"mean_token_accuracy", "entropy", "num_tokens"} <= set(last)
    assert sum("train_runtime" in entry for entry in trainer.state.log_history) == 1


def test_one_stage_with_packing_equals_sft_trainer_with_packing(tmp_path, tokenizer):
    from .test_plrs_trainer import assert_same_adapter, train_one_stage_beside_sft

    lora = lora_config(r=8, lora_alpha=16)
    sft, ours = train_one_stage_beside_sft(
        tmp_path, tokenizer, lora, lora, {"curriculum_stages": ["1,2,3"]}, packing=True, max_length=64,
        per_device_train_batch_size=2, max_steps=3,
    )  # fmt: skip
    # The same packed sequences (so the same batches), and the same trained adapter.
    assert len(ours.train_dataset) == len(sft.train_dataset) < len(make_leveled_dataset())
    assert ours.train_dataset["input_ids"] == sft.train_dataset["input_ids"]
    assert ours.train_dataset["seq_lengths"] == sft.train_dataset["seq_lengths"]
    assert_same_adapter(sft.model, os.path.join(ours.args.output_dir, "stage-1"))


def test_packing_packs_each_stage_its_own_rows(tmp_path, tokenizer):
    packed = {}

    class PackedRows(CurriculumCallback):
        def on_stage_begin(self, args, state, control, stage, **kwargs):
            rows = trainer.build_stage_dataset(stage)
            packed[stage.index] = (
                sorted(token for row in rows["input_ids"] for token in row),
                sorted(token for row in trainer.train_dataset["input_ids"] for token in row),
                len(rows),
                len(trainer.train_dataset),
            )

    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, packing=True, max_length=128, max_steps=1),
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=[PackedRows()],
    )
    trainer.train()
    for stage, (row_tokens, packed_tokens, rows, sequences) in packed.items():
        # Every token of the stage's rows (its levels + the replay), and no other, in fewer, longer sequences.
        assert packed_tokens == row_tokens, stage
        assert sequences < rows


def test_a_stopped_curriculum_resumes_from_its_last_checkpoint(tmp_path, tokenizer):
    class StopAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:  # mid stage 2
                control.should_training_stop = True

    stopped = train(tmp_path, tokenizer, callbacks=[StopAtStep()], save_strategy="steps", save_steps=1)
    assert stopped.state.global_step == 5 and len(stopped.stage_summaries) == 2
    resumed = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, save_strategy="steps", save_steps=1),
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=lora_config(lora_dropout=0.0),
    )
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 9
    assert [summary.stage for summary in resumed.stage_summaries] == [1, 2, 3]
    assert resumed.model.peft_config["default"].r == sum(RANKS)


def test_signature_has_sft_trainers_parameters_in_its_order():
    import inspect

    ours = list(inspect.signature(CurriculumSFTTrainer.__init__).parameters)
    theirs = list(inspect.signature(SFTTrainer.__init__).parameters)
    assert ours == theirs


# --------------------------------------------------------------------------------------------------------------------
# Curricula without a fresh LoRA adapter per stage: full fine-tuning, other PEFT methods, a ready PeftModel


def test_one_stage_full_fine_tuning_equals_sft_trainer(tmp_path, tokenizer):
    """TRL's `sft.py` without `--use_peft`: one stage trains the model's own weights exactly as `SFTTrainer` does."""
    from .test_plrs_trainer import train_one_stage_beside_sft

    sft, ours = train_one_stage_beside_sft(tmp_path, tokenizer, None, None, {"plrs_preset": "direct"})
    assert ours.adapter_transition == "carry" and ours.stages[0].lora_rank is None
    trained = dict(ours.model.named_parameters())
    assert sum(param.requires_grad for param in trained.values()) == len(trained)  # every weight trained
    for name, param in sft.model.named_parameters():
        torch.testing.assert_close(trained[name], param, atol=1e-6, rtol=0, msg=name)
    # Saved as `SFTTrainer` saves a model, with the curriculum's card.
    assert os.path.isfile(os.path.join(ours.args.output_dir, "model.safetensors"))
    with open(os.path.join(ours.args.output_dir, "README.md")) as file:
        assert "continued training the same parameters" in file.read()


def test_full_fine_tuning_curriculum_trains_every_stage_with_a_fresh_optimizer(tmp_path, tokenizer):
    optimizers = []

    class Optimizers(CurriculumCallback):
        def on_step_begin(self, args, state, control, optimizer, **kwargs):
            if not optimizers or optimizers[-1] is not optimizer:
                optimizers.append(optimizer)

    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, lora_ranks=None, replay="full", eval_strategy="steps", eval_steps=3),
        train_dataset=make_leveled_dataset(),
        eval_dataset=make_leveled_dataset(rows_per_level=2),
        processing_class=tokenizer,
        callbacks=[Optimizers()],
    )
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    trainer.train()
    assert [summary.rows for summary in trainer.stage_summaries] == [8, 16, 24]
    assert [summary.lora_rank for summary in trainer.stage_summaries] == [None, None, None]
    assert len(optimizers) == 3 and trainer.state.global_step == 9
    assert not any("lora_rank" in entry for entry in trainer.state.log_history)
    assert any("eval_level_3/loss" in entry for entry in trainer.state.log_history)  # per-level evaluation
    assert not os.path.exists(stage_dir(trainer.args.output_dir, 1))  # the weights are in the final save
    moved = [name for name, param in trainer.model.named_parameters() if not torch.equal(param, before[name])]
    assert len(moved) == len(before)
    reloaded = type(trainer.model).from_pretrained(trainer.args.output_dir)
    batch = probe(tokenizer)
    torch.testing.assert_close(logits(reloaded, batch), logits(trainer.model, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["prompt_tuning", "ready_lora_model"])
def test_one_adapter_is_carried_through_every_stage(tmp_path, tokenizer, kind):
    """Another PEFT method, or a `PeftModel` passed ready: its one adapter trains on at every stage and is saved."""
    from peft import PromptTuningConfig, get_peft_model

    model, peft_config = build_tiny_model(tokenizer), None
    if kind == "prompt_tuning":
        peft_config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    else:
        model = get_peft_model(model, lora_config(r=4, lora_alpha=8))
    trainer = CurriculumSFTTrainer(
        model,
        args=make_args(tmp_path, lora_ranks=None, plrs_preset="seq_full_replay"),
        train_dataset=make_leveled_dataset(),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    snapshots = []

    class Snapshot(CurriculumCallback):
        def on_stage_end(self, args, state, control, model, **kwargs):
            snapshots.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    trainer.add_callback(Snapshot())
    trainer.train()
    assert trainer.adapter_transition == "carry" and len(snapshots) == 3
    assert list(trainer.model.peft_config) == ["default"]  # one adapter, the same through every stage
    assert snapshots[0].keys() == snapshots[2].keys()
    assert any(
        not torch.equal(snapshots[0][name], snapshots[2][name]) for name in snapshots[0]
    )  # later stages trained it
    reloaded = PeftModel.from_pretrained(build_tiny_model(tokenizer), trainer.args.output_dir)
    batch = probe(tokenizer)
    torch.testing.assert_close(logits(reloaded, batch), logits(trainer.model, batch), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# The categories of TRL's own `tests/test_sft_trainer.py`, through a curriculum: where one stage should equal
# `SFTTrainer`, the trained weights are compared.


def _rows(kind: str, count: int = 12):
    """Rows of TRL's dataset formats, with a `level` column (1-3)."""
    from datasets import Dataset

    rows = []
    for i in range(count):
        question, answer = f"What is {i} + {i + 3}?", f"{i} + {i + 3} = {2 * i + 3}."
        row = {
            "language_modeling": {"text": f"{question} {answer}"},
            "conversational_language_modeling": {
                "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            },
            "prompt_completion": {"prompt": question, "completion": " " + answer},
            "conversational_prompt_completion": {
                "prompt": [{"role": "user", "content": question}],
                "completion": [{"role": "assistant", "content": answer}],
            },
            # TRL passes a `tools` column to the chat template (this tokenizer's template renders none of it).
            "tool_calling": {
                "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "add",
                            "description": "Add two numbers.",
                            "parameters": {"type": "object", "properties": {"a": {"type": "number"}}},
                        },
                    }
                ],
            },
        }[kind]
        rows.append({**row, "level": 1 + i % 3})
    return Dataset.from_list(rows)


def _assert_same_trained_weights(sft, ours, atol=1e-6):
    """The weights `SFTTrainer` trained equal the curriculum's (its stage adapter in LoRA mode, else the model's)."""
    if ours.stage_adapters is not None:
        from .test_plrs_trainer import assert_same_adapter

        assert_same_adapter(sft.model, stage_dir(ours.args.output_dir, 1), atol=atol)
        return
    expected = dict(sft.model.named_parameters())
    for name, param in ours.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, expected[name], atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize(
    "kind, overrides",
    [
        ("language_modeling", {}),
        ("conversational_language_modeling", {}),
        ("conversational_language_modeling", {"assistant_only_loss": True}),
        ("prompt_completion", {}),
        ("prompt_completion", {"completion_only_loss": False}),
        ("conversational_prompt_completion", {"gradient_checkpointing": True}),
        ("conversational_language_modeling", {"max_length": 12}),  # truncated rows
        ("tool_calling", {}),
    ],
)
@pytest.mark.parametrize("peft", ["lora", "full"])
def test_one_stage_equals_sft_trainer_on_trls_dataset_formats(tmp_path, tokenizer, kind, overrides, peft):
    from .test_plrs_trainer import train_one_stage_beside_sft

    peft_config = lora_config(r=8, lora_alpha=16) if peft == "lora" else None
    sft, ours = train_one_stage_beside_sft(
        tmp_path, tokenizer, peft_config, peft_config, {"curriculum_stages": ["1,2,3"]}, _rows(kind), max_steps=3,
        **overrides,
    )  # fmt: skip
    # The same tokenized rows (labels and masks included), and the same trained weights.
    assert ours.train_dataset["input_ids"] == sft.train_dataset["input_ids"]
    for column in ("completion_mask", "assistant_masks"):
        if column in sft.train_dataset.column_names:
            assert ours.train_dataset[column] == sft.train_dataset[column]
    _assert_same_trained_weights(sft, ours)


def test_a_dict_of_eval_datasets_and_compute_metrics_as_in_sft_trainer(tmp_path, tokenizer):
    """Several named eval sets (evaluated as given, not per level) and `compute_metrics`, as `SFTTrainer` reports them."""
    calls = []

    def compute_metrics(prediction):
        calls.append(prediction.predictions.shape)
        return {"custom": 1.0}

    eval_sets = {"a": _rows("prompt_completion", 4), "b": _rows("prompt_completion", 6)}
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args=make_args(tmp_path, eval_strategy="steps", eval_steps=3, max_steps=3),
        train_dataset=_rows("prompt_completion"),
        eval_dataset=eval_sets,
        processing_class=tokenizer,
        peft_config=lora_config(),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
    )
    trainer.train()
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"eval_a_loss", "eval_b_loss", "eval_a_custom", "eval_b_custom"} <= logged
    assert len(calls) == 2 * 3  # both sets, at the end of each of the 3 stages
    metrics = trainer.evaluate()
    assert {"eval_a_loss", "eval_b_custom", "stage"} <= set(metrics)


def test_the_model_card_carries_trls_tags_and_the_curriculums(tmp_path, tokenizer):
    trainer = train(tmp_path, tokenizer, max_steps=1)
    with open(os.path.join(trainer.args.output_dir, "README.md")) as file:
        card = file.read()
    for tag in ("trl", "sft", "curriculum", "plrs"):
        assert f"- {tag}" in card, tag


def test_best_model_checkpoint_is_the_last_stages(tmp_path, tokenizer):
    """With `load_best_model_at_end`, each stage continues from its own best checkpoint; afterwards
    `state.best_model_checkpoint` names the last stage's (one stage's adapter), while `output_dir` holds the curriculum."""
    trainer = selecting_the_best_model(tmp_path, tokenizer, "loss")
    trainer.train()
    best = trainer.state.best_model_checkpoint
    last_stage_steps = range(trainer.curriculum_state.stage_start_step + 1, trainer.state.global_step + 1)
    assert int(best.rsplit("-", 1)[1]) in last_stage_steps
    with open(os.path.join(best, "adapter_config.json")) as file:
        assert f'"r": {RANKS[-1]}' in file.read()  # the last stage's own adapter
    with open(os.path.join(trainer.args.output_dir, "adapter_config.json")) as file:
        assert f'"r": {sum(RANKS)}' in file.read()  # the whole curriculum

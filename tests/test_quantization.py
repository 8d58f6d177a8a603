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
QLoRA for real, on CPU: bitsandbytes 4-bit NF4 (double quantisation) and 8-bit tiny bases, trained as a 3-stage stack
curriculum with the per-level evaluation between steps (the no-grad eval forwards that repack 4-bit weights on
AVX512-BF16 CPUs), then checked against an fp32 model built from the dequantized weights.
"""

import os

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from trl_plrs import CurriculumCallback, CurriculumSFTTrainer
from trl_plrs.adapters import DEFAULT_ADAPTER, FROZEN_ADAPTER, lora_layers
from trl_plrs.quantization import keep_4bit_weights_trainable_on_cpu
from trl_plrs.testing import save_tiny_model
from trl_plrs.transitions import stage_dir

from .conftest import make_leveled_dataset
from .test_plrs_trainer import lora_config, make_args


bnb = pytest.importorskip("bitsandbytes")
from bitsandbytes.functional import dequantize_4bit  # noqa: E402


pytestmark = pytest.mark.slow

# Relative error ||g_4bit - g_ref|| / ||g_ref|| of the trainable adapter's gradients, where the reference computes the
# base matmul in fp32 with the dequantized weights: measured below 1e-5 (the same dequantized values, another kernel).
# The repacked-weights trap gives errors above 1.
GRADIENT_RTOL = 1e-3
# Logits of the combined adapter on a fresh quantized base vs the live stack (frozen adapters in fp32, the trainable
# one in bf16 as SFTTrainer keeps QLoRA adapters): measured max |difference| 1e-3 on logits that training moved by
# more than 0.1.
EXPORT_ATOL = 5e-3

QUANTIZATIONS = {
    "nf4": BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    ),
    "int8": BitsAndBytesConfig(load_in_8bit=True),
}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_model(str(tmp_path_factory.mktemp("qbase")), hidden_size=64)


def load_quantized(base_dir, quantization):
    return AutoModelForCausalLM.from_pretrained(
        base_dir, quantization_config=QUANTIZATIONS[quantization], dtype=torch.float32
    )


def quantized_state(model) -> dict[str, torch.Tensor]:
    """Every stored byte of the quantized base: packed weights and their quantisation statistics."""
    state = {}
    for name, module in model.named_modules():
        name = name.removeprefix("base_model.model.").replace(".base_layer", "")  # the same names before PEFT wraps
        if isinstance(module, bnb.nn.Linear4bit):
            quant_state = module.weight.quant_state
            state[f"{name}.weight"] = module.weight.data.clone()
            state[f"{name}.absmax"] = quant_state.absmax.clone()
            if quant_state.state2 is not None:
                state[f"{name}.absmax2"] = quant_state.state2.absmax.clone()
        elif isinstance(module, bnb.nn.Linear8bitLt):
            state[f"{name}.weight"] = module.weight.data.clone()
            state[f"{name}.SCB"] = int8_scales(module).clone()
    return state


def int8_scales(module) -> torch.Tensor:
    # bitsandbytes moves the row scales from the weight to the layer's state at the first forward.
    return module.weight.SCB if module.weight.SCB is not None else module.state.SCB


def dequantized(module: nn.Module) -> torch.Tensor:
    if isinstance(module, bnb.nn.Linear4bit):
        return dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    return module.weight.data.float() * int8_scales(module).float().unsqueeze(1) / 127.0


def adapter_gradients(model, batch) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    grads = {
        name: param.grad.detach().float().clone()
        for name, param in model.named_parameters()
        if param.requires_grad and param.grad is not None
    }
    model.zero_grad()
    return grads


def reference_gradients(model, batch) -> dict[str, torch.Tensor]:
    """The same model and adapters with every quantized base layer replaced by an fp32 `nn.Linear` (dequantized)."""
    originals = {}
    for layer in lora_layers(model):
        base = layer.get_base_layer()
        linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(dequantized(base))
            if base.bias is not None:
                linear.bias.copy_(base.bias.float())
        linear.requires_grad_(False)
        originals[layer] = layer.base_layer
        layer.base_layer = linear
    try:
        return adapter_gradients(model, batch)
    finally:
        for layer, base in originals.items():
            layer.base_layer = base


def relative_error(grads, reference) -> float:
    assert grads.keys() == reference.keys() and grads
    difference = sum(float((grads[name] - reference[name]).square().sum()) for name in grads) ** 0.5
    return difference / sum(float(reference[name].square().sum()) for name in grads) ** 0.5


class FrozenAdapterSnapshot(CurriculumCallback):
    """
    Copies of every frozen adapter's weights when each stage begins; at the last stage's end (after its evaluation
    per level, while the stage adapters are live: `train()` then replaces them by the exported adapter), the frozen
    adapters again, the gradient check against the dequantized fp32 model, and the logits of a probe batch.
    """

    def __init__(self, batch):
        self.batch, self.trainer = batch, None
        self.snapshots, self.final_frozen, self.gradient_error, self.live_logits = [], None, None, None

    @staticmethod
    def frozen(model):
        return {
            name: param.detach().clone()
            for name, param in model.named_parameters()
            if ".lora_" in name and f".{FROZEN_ADAPTER}." in name
        }

    def on_stage_begin(self, args, state, control, stage, model, **kwargs):
        self.snapshots.append(self.frozen(model))

    def on_stage_end(self, args, state, control, stage, model, **kwargs):
        if stage.index != len(self.trainer.stages) - 1:
            return
        self.final_frozen = self.frozen(model)
        self.gradient_error = relative_error(
            adapter_gradients(model, self.batch), reference_gradients(model, self.batch)
        )
        model.eval()
        with torch.no_grad():
            self.live_logits = model(**self.batch).logits
        model.train()


def train_stack_curriculum(tmp_path, tokenizer, base_dir, quantization, **kwargs):
    model = load_quantized(base_dir, quantization)
    before = quantized_state(model)
    batch = tokenizer(["What is 3 + 4?", "What is 12 + 30?"], return_tensors="pt", padding=True)
    snapshot = FrozenAdapterSnapshot(batch)
    dataset = make_leveled_dataset()
    args = make_args(
        tmp_path / quantization,
        adapter_transition="auto",
        lora_ranks=[16, 8, 4],
        eval_strategy="steps",
        eval_steps=1,
        per_device_eval_batch_size=8,
        **kwargs,
    )
    trainer = CurriculumSFTTrainer(
        model,
        args=args,
        train_dataset=dataset,
        eval_dataset=make_leveled_dataset(rows_per_level=4),
        processing_class=tokenizer,
        peft_config=lora_config(lora_dropout=0.0),
        callbacks=[snapshot],
    )
    snapshot.trainer = trainer
    trainer.train()
    return trainer, before, snapshot


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_stack_curriculum_on_a_quantized_base(tmp_path, tokenizer, base_dir, quantization):
    trainer, before, snapshot = train_stack_curriculum(tmp_path, tokenizer, base_dir, quantization)
    model = trainer.model
    assert trainer.adapter_transition == "stack"  # "auto" on a quantized base
    assert trainer.state.global_step == 9
    # The evaluation per level ran between steps.
    assert sum("eval_level_1/loss" in entry for entry in trainer.state.log_history) >= 9

    # The quantized base is bit-identical after the whole curriculum.
    after = quantized_state(model)
    assert after.keys() == before.keys() and after
    for name in before:
        assert torch.equal(after[name], before[name]), name

    # The one frozen adapter carries stages 1 and 2 (rank 16 + 8). What it held when a stage began is bit-identical in
    # it at the end (A's leading rows, B's leading columns), and it equals the saved stage adapters concatenated, each
    # A with its stage's scaling.
    final = snapshot.final_frozen
    assert len(final) == 2 * 14  # A and B of 7 projections x 2 layers
    assert [len(stage_snapshot) for stage_snapshot in snapshot.snapshots] == [0, 28, 28]
    for stage_snapshot in snapshot.snapshots:
        for name, value in stage_snapshot.items():
            held = final[name][: value.shape[0]] if ".lora_A." in name else final[name][:, : value.shape[1]]
            assert torch.equal(held, value), name
    saved = [
        load_file(os.path.join(stage_dir(trainer.args.output_dir, stage.number), "adapter_model.safetensors"))
        for stage in trainer.stages[:-1]
    ]
    for key in saved[0]:
        live_name = key.replace(".weight", f".{FROZEN_ADAPTER}.weight")
        if ".lora_A." in key:
            expected = torch.cat(
                [
                    stage_weights[key].float() * (stage.lora_alpha / stage.lora_rank)
                    for stage_weights, stage in zip(saved, trainer.stages)
                ]
            )
        else:
            expected = torch.cat([stage_weights[key].float() for stage_weights in saved], dim=1)
        assert torch.equal(final[live_name], expected), key

    # The LoRA gradients of the quantized model equal those of an fp32 model built from the dequantized weights:
    # after the per-level evaluations, which repack 4-bit weights on AVX512-BF16 CPUs unless the trainer prevents it.
    assert snapshot.gradient_error < GRADIENT_RTOL

    # The combined adapter on a freshly loaded quantized base reproduces the trained model; so does `trainer.model`,
    # which after `train()` is the base with that adapter.
    batch = snapshot.batch
    fresh = PeftModel.from_pretrained(load_quantized(base_dir, quantization), trainer.args.output_dir).eval()
    with torch.no_grad():
        reloaded = fresh(**batch).logits
        final_model = model.eval()(**batch).logits
        untrained = load_quantized(base_dir, quantization)(**batch).logits
    torch.testing.assert_close(reloaded, snapshot.live_logits, rtol=0, atol=EXPORT_ATOL)
    torch.testing.assert_close(final_model, snapshot.live_logits, rtol=0, atol=EXPORT_ATOL)
    assert (snapshot.live_logits - untrained).abs().max() > 20 * EXPORT_ATOL


def test_merge_is_refused_on_a_quantized_base(tmp_path, tokenizer, base_dir):
    with pytest.raises(ValueError, match="cannot be used with a quantized"):
        CurriculumSFTTrainer(
            load_quantized(base_dir, "nf4"),
            args=make_args(tmp_path, adapter_transition="merge"),
            train_dataset=make_leveled_dataset(),
            processing_class=tokenizer,
            peft_config=lora_config(),
        )


def test_paged_adamw_8bit_keeps_8bit_state_for_large_adapters(tmp_path, tokenizer, base_dir):
    states = []

    class OptimizerStates(CurriculumCallback):
        def on_stage_end(self, args, state, control, stage, optimizer, **kwargs):
            inner = getattr(optimizer, "optimizer", optimizer)
            states.append(
                {
                    "optimizer": (type(inner).__module__.split(".")[0], inner.is_paged, inner.args.optim_bits),
                    "dtypes": {
                        (tuple(param.shape), value["state1"].dtype)
                        for param, value in inner.state.items()
                        if "state1" in value
                    },
                }
            )

    trainer = CurriculumSFTTrainer(
        load_quantized(base_dir, "nf4"),
        # hidden size 64: a rank-64 A matrix has 4096 elements, the smallest that bitsandbytes keeps in 8 bits.
        args=make_args(tmp_path, optim="paged_adamw_8bit", lora_ranks=[64, 32], max_steps=2),
        train_dataset=make_leveled_dataset(levels=(1, 2)),
        processing_class=tokenizer,
        peft_config=lora_config(lora_dropout=0.0),
        callbacks=[OptimizerStates()],
    )
    trainer.train()
    assert [state["optimizer"] for state in states] == [("bitsandbytes", True, 8)] * 2  # a new one per stage
    # bitsandbytes keeps the state of tensors of >= 4096 elements in 8 bits (e.g. stage 1's 64x64 A matrices), and
    # smaller ones in 32 bits (stage 1's 32x64 A matrices): both kinds occur, and follow that rule.
    for state in states:
        for shape, dtype in state["dtypes"]:
            assert dtype == (torch.uint8 if torch.Size(shape).numel() >= 4096 else torch.float32), (shape, dtype)
    assert (torch.Size([64, 64]), torch.uint8) in {(torch.Size(shape), dtype) for shape, dtype in states[0]["dtypes"]}
    assert (torch.Size([32, 64]), torch.float32) in {
        (torch.Size(shape), dtype) for shape, dtype in states[1]["dtypes"]
    }


@pytest.mark.skipif(
    not getattr(bnb.functional, "has_avx512bf16", lambda: False)(),
    reason="the repacking trap exists only on CPUs with AVX512-BF16; the workaround is a no-op elsewhere",
)
def test_gradient_check_sees_the_repacked_weights_trap(tmp_path, tokenizer, base_dir):
    """The gradient comparison above is not vacuous: with the workaround undone, one eval forward breaks it."""
    model = load_quantized(base_dir, "nf4")
    trainer = CurriculumSFTTrainer(
        model,
        args=make_args(tmp_path, lora_ranks=[8], curriculum_stages=["1"]),
        train_dataset=make_leveled_dataset(levels=(1,)),
        processing_class=tokenizer,
        peft_config=lora_config(lora_dropout=0.0),
    )
    peft_model = trainer.model
    for layer in lora_layers(peft_model):
        with torch.no_grad():
            layer.lora_B[DEFAULT_ADAPTER].weight.normal_(std=0.1)  # B = 0 would give A no gradient
    batch = tokenizer(["What is 3 + 4?"], return_tensors="pt")
    assert relative_error(adapter_gradients(peft_model, batch), reference_gradients(peft_model, batch)) < GRADIENT_RTOL
    for module in peft_model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = True
    peft_model.eval()
    with torch.no_grad():
        peft_model(**batch)
    assert relative_error(adapter_gradients(peft_model, batch), reference_gradients(peft_model, batch)) > 0.5
    with pytest.raises(ValueError, match="already repacked"):
        keep_4bit_weights_trainable_on_cpu(peft_model)


def test_difficulty_scoring_leaves_4bit_weights_trainable(tmp_path, tokenizer, base_dir):
    """`curriculum_difficulty="base_loss"` runs no-grad eval forwards at construction: they must not repack the
    4-bit weights (the trap above), so the LoRA gradients stay those of the dequantized model."""
    trainer = CurriculumSFTTrainer(
        load_quantized(base_dir, "nf4"),
        args=make_args(tmp_path, lora_ranks=[8], curriculum_difficulty="base_loss", curriculum_num_levels=2),
        train_dataset=make_leveled_dataset().remove_columns("level"),
        processing_class=tokenizer,
        peft_config=lora_config(lora_dropout=0.0),
    )
    assert trainer.difficulty["method"] == "base_loss"
    peft_model = trainer.model
    for layer in lora_layers(peft_model):
        with torch.no_grad():
            layer.lora_B[DEFAULT_ADAPTER].weight.normal_(std=0.1)  # B = 0 would give A no gradient
    batch = tokenizer(["What is 3 + 4?"], return_tensors="pt")
    assert relative_error(adapter_gradients(peft_model, batch), reference_gradients(peft_model, batch)) < GRADIENT_RTOL

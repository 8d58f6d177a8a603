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
"""Private names of transformers and TRL are used in `trl_plrs/trainer_internals.py` only, and checked present."""

import ast
import os

import pytest
from transformers import Trainer
from trl import SFTTrainer

import trl_plrs
from trl_plrs.trainer_internals import REQUIRED_TRAINER_METHODS, check_trainer_internals


PACKAGE_DIR = os.path.dirname(trl_plrs.__file__)
INTERNALS_MODULE = "trainer_internals.py"
# Class attributes that TRL's model-card code reads from a trainer subclass: declared, not accessed.
DECLARED_FOR_TRL = {"_tag_names", "_name", "_paper"}


def _package_modules():
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path) as file:
                    yield os.path.relpath(path, PACKAGE_DIR), ast.parse(file.read())


def _own_private_names(trees) -> set[str]:
    """Private names that the package itself defines: functions, methods, classes and attributes it assigns."""
    names = set(DECLARED_FOR_TRL)
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("_"):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
                names.add(node.attr)
    return names


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def test_private_upstream_names_live_in_one_module():
    modules = dict(_package_modules())
    own = _own_private_names(modules.values())
    violations = []
    for path, tree in modules.items():
        if path == INTERNALS_MODULE:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or _is_dunder(node.attr):
                continue
            on_super = isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "super"
            if on_super or node.attr not in own:
                violations.append(f"{path}:{node.lineno}: .{node.attr}")
        for node in ast.walk(tree):
            # `getattr(obj, "_name")` is an access too.
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) in ("getattr", "hasattr", "setattr")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and node.args[1].value.startswith("_")
                and not _is_dunder(node.args[1].value)
                and node.args[1].value not in own
            ):
                violations.append(f"{path}:{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    assert violations == [], f"private upstream names outside {INTERNALS_MODULE}: {violations}"


def test_the_check_itself_sees_a_private_access(tmp_path):
    tree = ast.parse("def f(trainer):\n    return trainer._metrics\n")
    own = _own_private_names([tree])
    accesses = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr not in own]
    assert accesses == ["_metrics"]


def test_every_overridden_trainer_method_exists_upstream():
    for name in REQUIRED_TRAINER_METHODS:
        assert callable(getattr(SFTTrainer, name, None)), name
    check_trainer_internals()


def test_missing_trainer_method_fails_at_construction(monkeypatch):
    monkeypatch.delattr(Trainer, "_init_training_state")  # SFTTrainer inherits it
    with pytest.raises(ImportError, match=r"_init_training_state.*Install the tested versions"):
        check_trainer_internals()

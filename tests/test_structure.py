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
"""The package's shape, kept: no import cycle, only the trainer writes the trainer's attributes, short functions, one
module per concept (see docs/architecture.md)."""

import ast
import os

import trl_plrs


PACKAGE_DIR = os.path.dirname(trl_plrs.__file__)
# The trainer's own modules: the class and the mixin of its private-method overrides.
TRAINER_MODULES = {"trl_plrs.plrs_trainer", "trl_plrs.trainer_internals"}
MAX_FUNCTION_LINES = 100
MAX_TRAINER_CLASS_LINES = 620


def _modules() -> dict[str, tuple[str, ast.Module]]:
    modules = {}
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                dotted = "trl_plrs." + os.path.relpath(path, PACKAGE_DIR)[:-3].replace(os.sep, ".")
                dotted = dotted.removesuffix(".__init__")
                with open(path) as file:
                    modules[dotted] = (path, ast.parse(file.read()))
    return modules


def _imports(name: str, path: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Every module of the package that `name` imports, anywhere in it (`TYPE_CHECKING` and function bodies too)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base) if node.level else node.module
            candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {candidate for candidate in candidates if candidate in known and candidate != name}
    return found


def test_no_import_cycle():
    modules = _modules()
    # A package's `__init__` re-exports its modules; a module importing a name from its package is not a cycle of
    # concepts, so the packages themselves are left out of the graph.
    packages = {name for name, (path, _) in modules.items() if path.endswith("__init__.py")}
    graph = {
        name: _imports(name, path, tree, set(modules)) - packages
        for name, (path, tree) in modules.items()
        if name not in packages
    }
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def _trainer_writes(tree: ast.Module) -> list[str]:
    """Assignments to an attribute of `trainer` or `self.trainer` in `tree`."""
    writes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        else:
            continue
        for target in targets:
            for element in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(element, ast.Attribute) and ast.unparse(element.value) in ("trainer", "self.trainer"):
                    writes.append(f"{node.lineno}: {ast.unparse(element)}")
    return writes


def test_only_the_trainer_assigns_trainer_attributes():
    """Callbacks and helpers read the trainer and return what it stores (transformers' callback contract)."""
    writes = {name: _trainer_writes(tree) for name, (_, tree) in _modules().items() if name not in TRAINER_MODULES}
    assert not {name: found for name, found in writes.items() if found}


def test_the_write_check_sees_the_writes_it_forbids():
    code = "def f(self, trainer):\n    self.trainer.eval_dataset = 1\n    trainer.optimizer, x = None, 2\n    trainer.n += 1\n"
    assert _trainer_writes(ast.parse(code)) == ["2: self.trainer.eval_dataset", "3: trainer.optimizer", "4: trainer.n"]
    assert _trainer_writes(ast.parse("def f(trainer):\n    trainer.log({})\n    x = trainer.model\n")) == []


def test_functions_are_short_and_the_trainer_class_fits_a_read():
    long = []
    for name, (path, tree) in _modules().items():
        for node in ast.walk(tree):
            lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and lines > MAX_FUNCTION_LINES:
                long.append(f"{name}.{node.name}: {lines} lines")
            if isinstance(node, ast.ClassDef) and node.name == "CurriculumSFTTrainer":
                assert lines <= MAX_TRAINER_CLASS_LINES, f"CurriculumSFTTrainer has {lines} lines"
    assert not long, long

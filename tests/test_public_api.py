"""Other libraries through their public API only: a walk of the syntax tree of every module of
``lightning_glif`` finds

- private names reached through an object: ``x._name`` where ``x`` is not ``self``/``cls``,
  ``super()._name`` unless one of our own base classes defines ``_name``, and
  ``getattr(x, "_name")`` and the like (``torch.ops.aten.*`` counts as public);
- imports of private modules or private names of other packages (``import a._b``,
  ``from a._b import c``, ``from a import _c``);
- overrides of another package's private methods (``def _save_checkpoint`` in a subclass of
  ``ModelCheckpoint``): the base classes are imported to see what they define;
- monkeypatches: an attribute assigned to, or deleted from, an imported module or class of
  another package (``torch.x = ...``, ``setattr(Trainer, ...)``).

One module is exempt: ``lightning_glif/data/tonic_guard.py``, the fenced Tonic no-download
guard, whose docstring must name the Tonic version it was checked against. A failure lists each
reach as ``path:line: what``."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_glif"
OURS = "lightning_glif"
FENCED = PACKAGE / "data" / "tonic_guard.py"
PUBLIC_PREFIXES = ("torch.ops.aten",)  # torch's operator namespace: public op by op
ATTRIBUTE_CALLS = {"getattr", "hasattr", "setattr", "delattr"}


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def our_module(name: str | None, level: int = 0) -> bool:
    return level > 0 or name == OURS or (name or "").startswith(OURS + ".")


def classes_of(tree: ast.Module) -> dict[str, tuple[list[str], set[str]]]:
    """``{class name: (base names, names defined in its body)}`` of a module (bases by simple
    name: the last part of a dotted base)."""
    classes = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.Assign | ast.AnnAssign):
                    targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                    members.update(t.id for t in targets if isinstance(t, ast.Name))
            bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
            classes[node.name] = (bases, members)
    return classes


def inherited_from_us(cls: str, name: str, classes: dict) -> bool:
    """Whether one of our own classes among the bases of ``cls`` (transitively) defines
    ``name``."""
    seen, todo = set(), list(classes.get(cls, ([], set()))[0])
    while todo:
        base = todo.pop()
        if base in seen or base not in classes:
            continue  # another library's base: its private names are not ours
        seen.add(base)
        bases, members = classes[base]
        if name in members:
            return True
        todo.extend(bases)
    return False


def root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def resolve(expr: ast.expr, bound: dict[str, str]) -> Any:
    """The object a dotted name of another package refers to (``bound``: imported name ->
    dotted path), or ``None`` if it cannot be imported."""
    parts = ast.unparse(expr).split(".")
    if parts[0] not in bound:
        return None
    path = bound[parts[0]].split(".") + parts[1:]
    for split in range(len(path), 0, -1):
        try:
            obj = importlib.import_module(".".join(path[:split]))
        except ImportError:
            continue
        try:
            for attr in path[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def is_super_call(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
    )


def reaches(source: str, classes: dict) -> list[tuple[int, str]]:
    """``(line, what)`` of every reach into another library's private names, and every
    monkeypatch, in ``source``."""
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []
    # Names bound to another package's modules, classes or functions by an import (any scope).
    imported: dict[str, str] = {}  # name -> the dotted path it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not our_module(alias.name):
                    name = alias.asname or alias.name.split(".")[0]
                    imported[name] = alias.name if alias.asname else name
                    if any(private(part) for part in alias.name.split(".")):
                        found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if our_module(node.module, node.level):
                continue
            if any(private(part) for part in (node.module or "").split(".")):
                found.append((node.lineno, f"from {node.module} import ..."))
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                if private(alias.name):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))

    def visit(node: ast.AST, cls: str | None) -> None:
        if isinstance(node, ast.ClassDef):
            cls = node.name
            bases = [b for b in map(lambda e: resolve(e, imported), node.bases) if b is not None]
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and private(item.name):
                    for base in bases:
                        if hasattr(base, item.name):
                            what = f"overrides {base.__name__}.{item.name} (another package's)"
                            found.append((item.lineno, what))
        if isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value
            text = ast.unparse(owner)
            if is_super_call(owner):
                if cls is None or not inherited_from_us(cls, node.attr, classes):
                    found.append((node.lineno, f"super().{node.attr}: not a method of ours"))
            elif not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                if not text.startswith(PUBLIC_PREFIXES):
                    found.append((node.lineno, f"{text[:60]}.{node.attr}"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = node.args
            if node.func.id in ATTRIBUTE_CALLS and len(args) >= 2:
                target, name = args[0], args[1]
                attr = name.value if isinstance(name, ast.Constant) else None
                mine = isinstance(target, ast.Name) and target.id in ("self", "cls")
                if isinstance(attr, str) and private(attr) and not mine:
                    found.append((node.lineno, f"{node.func.id}({ast.unparse(target)}, {attr!r})"))
                if node.func.id in ("setattr", "delattr") and root_name(target) in imported:
                    found.append((node.lineno, f"{node.func.id} on {ast.unparse(target)}"))
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        for target in targets:
            for t in target.elts if isinstance(target, ast.Tuple | ast.List) else [target]:
                if isinstance(t, ast.Attribute) and root_name(t) in imported:
                    found.append((t.lineno, f"assigns {ast.unparse(t)} (another package's)"))
        for child in ast.iter_child_nodes(node):
            visit(child, cls)

    visit(tree, None)
    return sorted(set(found))


FILES = sorted(PACKAGE.rglob("*.py"))
CLASSES = {k: v for path in FILES for k, v in classes_of(ast.parse(path.read_text())).items()}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_names_of_other_libraries_and_no_monkeypatch(path):
    if path == FENCED:
        pytest.skip("the fenced Tonic guard: checked by the next test")
    where = path.relative_to(ROOT)
    found = [f"{where}:{line}: {what}" for line, what in reaches(path.read_text(), CLASSES)]
    assert not found, "reaches into other libraries' internals:\n" + "\n".join(found)


def test_the_fenced_tonic_guard_names_the_version_it_was_checked_against():
    if not FENCED.is_file():
        pytest.skip(f"no fenced module ({FENCED.relative_to(ROOT)}) in this checkout")
    docstring = ast.get_docstring(ast.parse(FENCED.read_text())) or ""
    assert re.search(r"\b[Tt]onic\s+\d+\.\d+(\.\d+)?\b", docstring), (
        f"{FENCED.relative_to(ROOT)}: its docstring must name the Tonic version it was checked "
        "against (e.g. 'Checked against Tonic 1.7.1')."
    )


# -- the walk itself finds what it must, and only that -------------------------------------------
CAUGHT = {
    "import torch\nx = torch._C._autograd": ["torch._C", "torch._C._autograd"],
    "def f(m):\n    return m._reversed_padding_repeated_twice": [
        "m._reversed_padding_repeated_twice"
    ],
    "class A:\n    def f(self):\n        return self.trainer._results": ["self.trainer._results"],
    "from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters": [
        "from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters"
    ],
    "import torch._dynamo": ["import torch._dynamo"],
    "from torch._C import Graph": ["from torch._C import ..."],
    "from pytorch_lightning.callbacks import ModelCheckpoint\n"
    "class L(ModelCheckpoint):\n    def f(self):\n        super()._save_checkpoint(1, 2)": [
        "super()._save_checkpoint: not a method of ours"
    ],
    "def f(x):\n    return getattr(x, '_prefix', '')": ["getattr(x, '_prefix')"],
    "from pytorch_lightning.callbacks import ModelCheckpoint\n"
    "class L(ModelCheckpoint):\n    def _save_checkpoint(self, trainer, path):\n        pass": [
        "overrides ModelCheckpoint._save_checkpoint (another package's)"
    ],
    "def f():\n    from tensorboard.summary.writer import record_writer\n"
    "    record_writer.masked_crc32c = len": [
        "assigns record_writer.masked_crc32c (another package's)"
    ],
    "from pytorch_lightning import Trainer\nTrainer.fit = None": [
        "assigns Trainer.fit (another package's)"
    ],
    "import torch.nn.functional as F\nsetattr(F, 'relu', abs)": ["setattr on F"],
    "import torch\ndel torch.nn.ReLU.forward": [
        "assigns torch.nn.ReLU.forward (another package's)"
    ],
}

ALLOWED = [
    # a private helper of our own in a subclass of another package's class
    "from pytorch_lightning import Callback\nclass C(Callback):\n    def _hook(self):\n        ...",
    "class A:\n    def f(self):\n        return self._x, type(self).__name__",
    "class A:\n    @classmethod\n    def f(cls):\n        return cls._registry",
    "class Base:\n    def _own(self):\n        pass\nclass B(Base):\n    def _own(self):\n"
    "        return super()._own()",
    "import torch\nop = torch.ops.aten._native_batch_norm_legit",
    "from lightning_glif.neurons.fused import _engine\nfrom lightning_glif.x import _y",
    "from . import _private",
    "def f(trainer, exception):\n    trainer.should_stop = True\n    exception.code = 143",
    "import torch\nx = torch.zeros(1)\nx.data = torch.ones(1)",
]


@pytest.mark.parametrize("source", list(CAUGHT), ids=range(len(CAUGHT)))
def test_the_walk_finds_each_kind_of_reach(source):
    classes = classes_of(ast.parse(source))
    assert [what for _, what in reaches(source, classes)] == CAUGHT[source]


@pytest.mark.parametrize("source", ALLOWED, ids=range(len(ALLOWED)))
def test_the_walk_allows_our_own_names_and_public_ops(source):
    assert reaches(source, classes_of(ast.parse(source))) == []

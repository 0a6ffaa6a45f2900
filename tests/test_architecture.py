"""The import order of ARCHITECTURE.md, checked on every module's imports (those inside functions too):

    latte_core ← datasets ← {pipelines, train} ← inference ← tools / cli

A room imports only from itself and the rooms to its left; pipelines and train do not import each other;
cli (the `latte` command) may import every room and nothing imports it; pretrained/ (the shipped weights)
imports nothing of the project and any room may read its one path constant."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# each room: the folder it lives in and the package name it installs as
ROOMS = {"latte_core": "latte_core", "datasets": "latte_toolkit.datasets", "pipelines": "latte_toolkit.pipelines",
         "train": "latte_toolkit.train", "inference": "latte_toolkit.inference", "tools": "latte_toolkit.tools",
         "cli": "latte_toolkit.cli", "pretrained": "latte_toolkit.pretrained"}
BELOW = {  # the rooms each room may import besides itself
    "latte_core": {"pretrained"},
    "pretrained": set(),
    "datasets": {"latte_core", "pretrained"},
    "pipelines": {"latte_core", "datasets", "pretrained"},
    "train": {"latte_core", "datasets", "pretrained"},
    "inference": {"latte_core", "datasets", "pipelines", "train", "pretrained"},
    "tools": {"latte_core", "datasets", "pipelines", "train", "inference", "pretrained"},
    "cli": {"latte_core", "datasets", "pipelines", "train", "inference", "tools", "pretrained"},
}


def _room_of(name):
    """The room an absolute module name belongs to, or None for a module outside the project."""
    for room, package in ROOMS.items():
        if name == package or name.startswith(package + "."):
            return room
    return None


def _modules():
    for room in ROOMS:
        for folder, _, files in os.walk(os.path.join(ROOT, room)):
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    parts = os.path.relpath(path, os.path.join(ROOT, room))[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    yield room, ".".join([ROOMS[room]] + parts), path


def imports_of(module, path):
    """(line, absolute module name) of every import in the file, at any depth (relative ones resolved)."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from . import x` names submodules: each counts as its own import
            for alias in node.names if not node.module else [None]:
                yield node.lineno, target + (f".{alias.name}" if alias is not None else "")


MODULES = list(_modules())


def test_every_room_is_found():
    assert {room for room, _, _ in MODULES} == set(ROOMS)


@pytest.mark.parametrize("room,module,path", MODULES, ids=[module for _, module, _ in MODULES])
def test_imports_follow_the_order(room, module, path):
    wrong = [f"{os.path.relpath(path, ROOT)}:{line}: {room} imports {target}"
             for line, target in imports_of(module, path)
             if (other := _room_of(target)) not in (None, room) and other not in BELOW[room]]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    path = tmp_path / "stage.py"
    path.write_text("def f():\n    from latte_toolkit.train.loop import train\n\nfrom ..inference import sample\n"
                    "from . import jobs\n")
    found = dict((target, line) for line, target in imports_of("latte_toolkit.pipelines.stage", str(path)))
    assert found == {"latte_toolkit.train.loop": 2, "latte_toolkit.inference": 4, "latte_toolkit.pipelines.jobs": 5}
    assert {_room_of(target) for target in found} == {"train", "inference", "pipelines"}


def test_modules_without_mindspore_let_a_process_load_it_afterwards():
    """decord loaded before MindSpore aborts the process (std::random_device), so the modules that decode
    without MindSpore load decord only when they decode."""
    code = ("import latte_toolkit.datasets.video, latte_toolkit.pipelines.ingest, "
            "latte_toolkit.pipelines.decode_worker, latte_toolkit.tools.synthetic, "
            "latte_toolkit.tools.bench.ingest, sys; assert 'decord' not in sys.modules; import mindspore; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]

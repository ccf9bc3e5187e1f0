"""Every repository path, test and ``python -m`` module that README.md and docs/*.md name exists (so
the documentation cannot drift from the tree)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "checkpoints" / "README.md"]
TOP = ("lit_diffusion/", "docs/", "configs/", "bench/", "tests/", "scripts/", "checkpoints/mnist", ".ci/")
PATH = re.compile(r"(?<![\w/.-])((?:lit_diffusion|docs|configs|bench|tests|scripts|\.ci)/[\w./-]*[\w]|checkpoints/mnist(?:-cond)?(?:/[\w.-]+)*)")
TEST = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
EXTERNAL = {"tests/schedulers/test_schedulers.py"}  # diffusers' own test file, named as such
MODULE = re.compile(r"python -m (lit_diffusion[\w.]*)")


def _texts():
    for doc in DOCS:
        yield doc, doc.read_text()


def test_every_named_path_exists():
    missing = []
    for doc, text in _texts():
        for m in PATH.finditer(text):
            p = m.group(1).rstrip(".")
            after = text[m.end():m.end() + 1]
            if after in ("*", "<", "{") or "/samples" in p or p in EXTERNAL:
                continue  # a pattern, an output or another project's file
            if not (ROOT / p).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {p}")
    assert not missing, "\n".join(sorted(set(missing)))


def test_every_named_test_exists():
    missing = []
    for doc, text in _texts():
        for m in TEST.finditer(text):
            f, name = ROOT / m.group(1), m.group(2)
            name = name + (r"\w*" if text[m.end():m.end() + 1] == "*" else r"\b")  # "*": a family of tests
            if not f.exists() or not re.search(rf"def {name}", f.read_text()):
                missing.append(f"{doc.relative_to(ROOT)}: {m.group(0)}")
    assert not missing, "\n".join(sorted(set(missing)))


def test_every_python_m_module_exists():
    missing = []
    for doc, text in _texts():
        for m in MODULE.finditer(text):
            name = m.group(1).rstrip(".")
            if importlib.util.find_spec(name) is None:
                missing.append(f"{doc.relative_to(ROOT)}: {name}")
    assert not missing, "\n".join(sorted(set(missing)))

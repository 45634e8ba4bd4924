"""ropepatch's NumPy reference of transformers' rope (ropepatch.check.hf_reference): its formulas
without torch and, when transformers and torch are installed (``pytest -m transformers``), the
same inverse frequencies as transformers on patched models (``ROPE_INIT_FUNCTIONS``), and a
patched model that transformers loads and that reverts to the same logits.

The models are the committed fixtures/hf models, or equivalents built in tmp_path (_helpers_hf.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers_hf import METHODS, fixture_model, llama_config, make_model
from conftest import require

from ropepatch.check import hf_reference as ref
from ropepatch.formats.hf.config import load_config, read_rope
from ropepatch.patch.hf import patch_hf, revert_hf

# ---- the NumPy reference against transformers ------------------------------------------------


def test_reference_formulas_without_torch():
    inv, att = ref.yarn_inv_freq(10000.0, 16, 4.0, 128)
    base = ref.default_inv_freq(10000.0, 16)[0]
    assert att == pytest.approx(1 + 0.1 * math.log(4.0))
    assert inv[0] == pytest.approx(base[0])  # highest frequency extrapolated
    assert inv[-1] == pytest.approx(base[-1] / 4.0)  # lowest interpolated
    dyn = ref.dynamic_inv_freq(10000.0, 16, 4.0, 128, seq_len=512)[0]
    assert dyn == pytest.approx(ref.default_inv_freq(10000.0 * (4 * 512 / 128 - 3) ** (16 / 14), 16)[0])
    assert np.array_equal(ref.dynamic_inv_freq(10000.0, 16, 4.0, 128, seq_len=64)[0], base)


def default_rope(cfg, model_type):
    """transformers' default-rope inverse frequencies: ROPE_INIT_FUNCTIONS["default"] (v4) or
    the model's own RotaryEmbedding.compute_default_rope_parameters (v5)."""
    import importlib

    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if "default" in ROPE_INIT_FUNCTIONS:
        return ROPE_INIT_FUNCTIONS["default"](cfg, None)
    mod = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    cls = next(getattr(mod, n) for n in dir(mod) if n.endswith("RotaryEmbedding")
               and hasattr(getattr(mod, n), "compute_default_rope_parameters"))
    return cls.compute_default_rope_parameters(cfg)


@pytest.mark.transformers
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "partial"])
@pytest.mark.parametrize("method", METHODS)
def test_reference_matches_transformers(tmp_path, name, method):
    transformers = require("transformers")
    require("torch")
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if name == "partial":  # phi: partial rotary (d = 8 of head_dim 16), base 500000
        d = make_model(tmp_path / "m", llama_config(
            model_type="phi", architectures=["PhiForCausalLM"], partial_rotary_factor=0.5,
            rope_theta=500000.0, head_dim=..., rms_norm_eps=..., layer_norm_eps=1e-05))
    else:
        d = fixture_model(tmp_path, name)
    patch_hf(str(d), 1000, method)
    cfg = AutoConfig.from_pretrained(str(d))
    doc = load_config(str(d / "config.json"))
    rope = read_rope(doc)
    rtype = rope.rope_type
    for seq_len in (None, 700, 3000):
        if rtype == "default":
            inv, att = default_rope(cfg, rope.model_type)
        else:
            inv, att = ROPE_INIT_FUNCTIONS[rtype](cfg, None, seq_len=seq_len)
        want, want_att = ref.hf_inv_freq(doc, seq_len=seq_len)
        assert len(want) == rope.rope_dim // 2 == inv.shape[0]
        np.testing.assert_allclose(inv.numpy(), want, rtol=2e-6, atol=0)
        assert att == pytest.approx(want_att, rel=1e-12)
    assert transformers.__version__


@pytest.mark.transformers
def test_transformers_loads_patched_model(tmp_path):
    require("transformers")
    torch = require("torch")
    from transformers import AutoModelForCausalLM

    d = fixture_model(tmp_path, "tiny-llama")
    ids = torch.tensor([[1, 5, 9, 40, 7, 3]])
    with torch.no_grad():
        m0 = AutoModelForCausalLM.from_pretrained(str(d))
        base = m0(ids).logits
    patch_hf(str(d), 1024, "yarn")  # the header now carries ropepatch.* metadata
    with torch.no_grad():
        m1 = AutoModelForCausalLM.from_pretrained(str(d))
        out = m1(ids).logits
    rope = getattr(m1.config, "rope_parameters", None) or m1.config.rope_scaling  # v5 / v4
    assert rope["rope_type"] == "yarn"
    assert out.shape == base.shape and not torch.allclose(out, base)
    revert_hf(str(d))
    with torch.no_grad():
        again = AutoModelForCausalLM.from_pretrained(str(d))(ids).logits
    assert torch.equal(again, base)

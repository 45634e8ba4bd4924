"""What a plan writes into an HF config.json, and which keys that changes.

    rope_block(plan: Plan) -> RopeBlock                     # what each method writes, spelled neutrally
    apply_plan(doc: ConfigDoc, rope: HFRope, plan: Plan) -> tuple[dict, list[ConfigChange]]
    diff_configs(before: dict, after: dict) -> list[ConfigChange]

What each method writes (L = the model's original context, N = target, a = alpha, default N/L):

* ``ntk``: ``rope_theta`` = b * a^(d/(d-2)) (every place the config holds rope_theta), no
  scaling block, ``max_position_embeddings`` = N (so servers do not cap at L; the default rope
  never reads it);
* ``dynamic``: block ``{"rope_type": "dynamic", "factor": a}`` (a float),
  ``max_position_embeddings`` = L (dynamic NTK scales relative to it);
* ``linear``: block ``{"rope_type": "linear", "factor": a}``, ``max_position_embeddings`` = L
  (vLLM derives the usable length as max_position_embeddings * factor);
* ``yarn``: block ``{"rope_type": "yarn", "factor": a, "original_max_position_embeddings": L}``,
  ``max_position_embeddings`` = N (a top-level ``original_max_position_embeddings``, which
  transformers prefers, is set to L too);
* ``none``: no scaling block, ``max_position_embeddings`` = N.

v4-style configs get ``rope_scaling`` (replacing the value in place when the key exists, ``null``
for ntk/none); v5-style configs (``rope_parameters``, no ``rope_scaling``) get the scaling keys in
``rope_parameters`` next to its ``rope_theta`` and other non-scaling keys, which are kept. Key
order is kept; a new key goes in sorted position when its object's keys are sorted (files written
by transformers), else at the end.

The spelling per method is registry data (:attr:`ropepatch.rope.methods.Method.hf`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ropepatch.formats.hf import keys as hk
from ropepatch.formats.hf.config import HFRope
from ropepatch.formats.hf.json_doc import ConfigDoc
from ropepatch.rope.methods import Plan, get_method


@dataclass(frozen=True)
class RopeBlock:
    """A method's HF settings, spelled neutrally (see :func:`rope_block`)."""

    rope_theta: float
    scaling: dict | None  # {"rope_type": ..., "factor": ..., ...} or None (plain default rope)
    max_position_embeddings: int


def rope_block(plan: Plan) -> RopeBlock:
    """What ``plan`` writes into an HF config, from the method's registry spelling
    (:class:`ropepatch.rope.methods.HFSpelling`). ``plan.original`` must be the UNSCALED model
    (n_ctx_train = L, freq_base = b), as :func:`ropepatch.formats.hf.config.unscaled_params`
    builds it."""
    L, N, a = plan.original.n_ctx_train, plan.ctx, float(plan.alpha)
    hf = get_method(plan.method).hf
    theta = float(plan.target.freq_base) if hf.theta_from_target else plan.original.freq_base
    scaling = None
    if hf.rope_type is not None:
        scaling = {hk.RS_ROPE_TYPE: hf.rope_type, hk.RS_FACTOR: a}
        if hf.writes_orig_max_pos:
            scaling[hk.RS_ORIG_MAX_POS] = L
    return RopeBlock(theta, scaling, N if hf.max_pos_is_target else L)


@dataclass(frozen=True)
class ConfigChange:
    """One key whose value differs between two configs."""

    key: str  # dotted path, e.g. "rope_scaling" or "text_config.rope_theta"
    before: Any
    after: Any

    def to_dict(self) -> dict:
        return {"key": self.key, "before": self.before, "after": self.after}


def _sorted_keys(d: dict) -> bool:
    keys = list(d)
    return len(keys) > 1 and keys == sorted(keys)


def _set(d: dict, key: str, value: Any, sort: bool | None = None) -> dict:
    """Set ``d[key]`` keeping key order; a new key goes in sorted position when ``d`` is sorted."""
    if key in d:
        d[key] = value
        return d
    if sort is None:
        sort = _sorted_keys(d)
    if not sort:
        d[key] = value
        return d
    items = list(d.items()) + [(key, value)]
    items.sort(key=lambda kv: kv[0])
    d.clear()
    d.update(items)
    return d


def _ordered(block: dict, sort: bool) -> dict:
    return dict(sorted(block.items())) if sort else block


def _write_v5(c: dict, rb: RopeBlock, sort: bool, new_theta: bool) -> None:
    """Write ``rb`` into the section ``c`` as transformers v5 does: in ``rope_parameters``."""
    old = c.get(hk.ROPE_PARAMETERS) or {}
    blk = {k: v for k, v in old.items() if k not in hk.SCALING_BLOCK_KEYS}
    bsort = _sorted_keys(old) or (not old and sort)
    if hk.RS_ROPE_TYPE in old:  # keep rope_type's position
        blk = {}
        for k, v in old.items():
            if k == hk.RS_ROPE_TYPE:
                blk[k] = None
            elif k not in hk.SCALING_BLOCK_KEYS:
                blk[k] = v
    scaling = rb.scaling or {hk.RS_ROPE_TYPE: hk.RT_DEFAULT}
    for k, v in scaling.items():
        _set(blk, k, v, bsort)
    if hk.ROPE_THETA in blk or hk.ROPE_THETA not in c:
        _set(blk, hk.ROPE_THETA, rb.rope_theta if new_theta else blk.get(hk.ROPE_THETA, rb.rope_theta), bsort)
    _set(c, hk.ROPE_PARAMETERS, blk, sort)


def _write_v4(c: dict, rb: RopeBlock, sort: bool, new_theta: bool) -> None:
    """Write ``rb`` into the section ``c`` as transformers v4 does: ``rope_scaling``."""
    if rb.scaling is not None:
        _set(c, hk.ROPE_SCALING, _ordered(dict(rb.scaling), sort), sort)
    elif hk.ROPE_SCALING in c:
        c[hk.ROPE_SCALING] = None
    if new_theta and hk.ROPE_THETA not in c and hk.ROTARY_EMB_BASE not in c:
        _set(c, hk.ROPE_THETA, rb.rope_theta, sort)


def apply_plan(doc: ConfigDoc, rope: HFRope, plan: Plan) -> tuple[dict, list[ConfigChange]]:
    """A copy of ``doc.data`` (the ORIGINAL config) with ``plan``'s settings written, plus the
    list of changed keys. ``rope`` must be
    :func:`~ropepatch.formats.hf.config.read_rope` of ``doc``."""
    new = copy.deepcopy(doc.data)
    c = new
    for s in rope.section:
        c = c[s]
    rb = rope_block(plan)
    sort = _sorted_keys(c)
    hf = get_method(plan.method).hf
    write = _write_v5 if rope.block_key == hk.ROPE_PARAMETERS else _write_v4
    write(c, rb, sort, hf.theta_from_target)
    if hf.theta_from_target:  # every place the section states the base
        for k in (hk.ROPE_THETA, hk.ROTARY_EMB_BASE):
            if k in c:
                c[k] = rb.rope_theta
    c[hk.MAX_POSITION_EMBEDDINGS] = rb.max_position_embeddings
    if hf.writes_orig_max_pos and hk.RS_ORIG_MAX_POS in c:
        c[hk.RS_ORIG_MAX_POS] = plan.original.n_ctx_train
    return new, diff_configs(doc.data, new)


def diff_configs(before: dict, after: dict, prefix: str = "") -> list[ConfigChange]:
    """Keys whose values differ (recursing into text_config only)."""
    out: list[ConfigChange] = []
    for k in list(before) + [k for k in after if k not in before]:
        b, a = before.get(k, _MISSING), after.get(k, _MISSING)
        if k == hk.TEXT_CONFIG and isinstance(b, dict) and isinstance(a, dict):
            out.extend(diff_configs(b, a, f"{prefix}{k}."))
        elif b != a or type(b) is not type(a):
            out.append(ConfigChange(prefix + k, None if b is _MISSING else b, None if a is _MISSING else a))
    return out


class _Missing:
    def __repr__(self) -> str:  # pragma: no cover
        return "<missing>"


_MISSING = _Missing()

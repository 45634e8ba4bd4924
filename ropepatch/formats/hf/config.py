"""Read a Hugging Face ``config.json``'s rope settings.

Public API (no file writes here; :mod:`ropepatch.patch.hf` does the I/O)::

    read_rope(doc: ConfigDoc) -> HFRope                     # FormatError on missing rope fields
    check_composable_hf(rope: HFRope, method: str, replace_scaling: bool = False) -> None
    unscaled_params(rope: HFRope) -> RopeParams             # the model before any scaling (L, b, d)
    parse_config / load_config / dump_config / ConfigDoc    # re-exported from json_doc

What a method writes back is :mod:`ropepatch.formats.hf.apply`.

Where the settings live (the same precedence transformers v5 uses):

* section: ``text_config`` when it is an object carrying any rope key (multimodal configs),
  else the top level;
* block: a non-empty ``rope_scaling`` object (v4) wins over ``rope_parameters`` (v5);
  ``rope_type`` falls back to the legacy ``type``; no block means ``default``;
* ``rope_theta``: inside the block when there, else the section's ``rope_theta`` (required: a
  config without one is refused rather than guessing the model's default);
* rotated dims d = int(head_dim * partial_rotary_factor), head_dim = ``head_dim`` or
  ``hidden_size // num_attention_heads``; partial_rotary_factor from the block, else the section.

Layout: ``HFRope.layout`` is given in GGUF terms from ``model_type`` (llama -> NORM, qwen2 ->
NEOX, see :func:`ropepatch.rope.arch.rope_layout`). In transformers every model rotates with
``rotate_half`` (pairs i, i + d/2); llama.cpp's converter permutes llama Q/K weights so NORM on
the GGUF equals rotate_half on the HF weights. The inverse frequencies are the same either way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ropepatch.errors import FormatError, UnsupportedModelError
from ropepatch.formats.hf import keys as hk
from ropepatch.formats.hf.json_doc import ConfigDoc, dump_config, load_config, parse_config
from ropepatch.rope.arch import NO_ROPE_ARCHS, rope_layout
from ropepatch.rope.params import RopeLayout, RopeParams, ScalingType

__all__ = [
    "ConfigDoc", "HFRope", "check_composable_hf", "dump_config", "hf_layout", "load_config",
    "parse_config", "read_rope", "unscaled_params",
]


# ---- reading the rope settings -----------------------------------------------------------

_ROPE_KEYS = (hk.ROPE_THETA, hk.ROPE_SCALING, hk.ROPE_PARAMETERS, hk.MAX_POSITION_EMBEDDINGS)
# rope types whose context before scaling is original_max_position_embeddings
_ORIG_CTX_TYPES = (hk.RT_YARN, hk.RT_LLAMA3, hk.RT_LONGROPE, hk.RT_SU)


@dataclass(frozen=True)
class HFRope:
    """A model's rope settings as config.json states them (transformers semantics)."""

    config_path: str
    model_type: str
    section: tuple[str, ...]  # () for the top level, ("text_config",) for multimodal configs
    block_key: str  # "rope_scaling" or "rope_parameters": where the scaling block is / goes
    block_present: bool  # a non-empty block exists in the file
    rope_theta: float
    max_position_embeddings: int
    head_dim: int
    partial_rotary_factor: float
    rope_dim: int
    rope_type: str  # "default" when there is no scaling
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    attention_factor: float | None = None
    block: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    layout: RopeLayout = RopeLayout.UNKNOWN

    @property
    def where(self) -> str:
        """Dotted prefix of the section holding the settings ("" or "text_config.")."""
        return "".join(s + "." for s in self.section)

    @property
    def orig_ctx(self) -> int:
        """L: the context the model was trained at before any scaling in this config."""
        if self.rope_type in _ORIG_CTX_TYPES:
            return self.original_max_position_embeddings or self.max_position_embeddings
        return self.max_position_embeddings

    @property
    def effective_ctx(self) -> int:
        """The context this config allows, derived as vLLM does (max_model_len)."""
        f = self.factor or 1.0
        if self.rope_type in (hk.RT_LINEAR, hk.RT_DYNAMIC):
            return int(self.max_position_embeddings * f)
        if self.rope_type == hk.RT_YARN and self.original_max_position_embeddings:
            return int(self.original_max_position_embeddings * f)
        return self.max_position_embeddings

    @property
    def is_scaled(self) -> bool:
        """True when a positional scaling is configured (factor != 1 or per-pair factors)."""
        if self.rope_type in (hk.RT_DEFAULT,):
            return False
        if self.rope_type in (hk.RT_LINEAR, hk.RT_DYNAMIC, hk.RT_YARN):
            return self.factor is None or self.factor != 1.0
        return True

    def to_params(self) -> RopeParams:
        """The settings in GGUF terms (what llama.cpp's converter would write).

        dynamic has no GGUF equivalent: it shows as unscaled with the original base.
        """
        st, factor, orig, freq = ScalingType.NONE, 0.0, 0, False
        if self.rope_type == hk.RT_LINEAR:
            st, factor = ScalingType.LINEAR, self.factor or 0.0
        elif self.rope_type == hk.RT_YARN:
            st, factor = ScalingType.YARN, self.factor or 0.0
            orig = self.original_max_position_embeddings or 0
        elif self.rope_type in (hk.RT_LONGROPE, hk.RT_SU):
            st, factor, freq = ScalingType.LONGROPE, self.factor or 0.0, True
            orig = self.original_max_position_embeddings or 0
        elif self.rope_type == hk.RT_LLAMA3:
            freq = True
        return RopeParams(
            arch=self.model_type,
            n_ctx_train=self.max_position_embeddings,
            rope_dim=self.rope_dim,
            head_dim=self.head_dim,
            freq_base=self.rope_theta,
            scaling_type=st,
            scaling_factor=factor,
            orig_ctx=orig,
            layout=self.layout,
            has_freq_factors=freq,
        )

    def to_dict(self) -> dict:
        return {
            "config": self.config_path,
            "model_type": self.model_type,
            "section": self.where.rstrip(".") or None,
            "block_key": self.block_key,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "head_dim": self.head_dim,
            "partial_rotary_factor": self.partial_rotary_factor,
            "rope_dim": self.rope_dim,
            "rope_type": self.rope_type,
            "factor": self.factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "attention_factor": self.attention_factor,
            "orig_ctx": self.orig_ctx,
            "effective_ctx": self.effective_ctx,
            "layout": self.layout.value,
        }


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


MAX_CONTEXT = 2**40  # max_position_embeddings and the original one; larger is no model's (floats overflow)
MAX_DIM = 2**24  # head_dim, hidden_size, num_attention_heads
MAX_FACTOR = 1e6  # a scaling factor (real ones are 2 to 128)


def _bounded(path: str, key: str, v: int, limit: int) -> int:
    if v > limit:
        big = f"{str(v)[:30]}..." if v >= 10**30 else v
        raise FormatError(f"{path}: {key} must be at most {limit}, found {big}; fix config.json")
    return v


def _arch_candidates(model_type: str) -> list[str]:
    mt = model_type.lower()
    base = mt[: -len("_text")] if mt.endswith("_text") else mt
    return [mt, base, base.replace("_", ""), base.replace("_", "-")]


def hf_layout(model_type: str) -> RopeLayout:
    """GGUF-terms layout for an HF model_type (UNKNOWN when not listed)."""
    for name in _arch_candidates(model_type):
        lay = rope_layout(name)
        if lay != RopeLayout.UNKNOWN:
            return lay
    return RopeLayout.UNKNOWN


def _section(data: dict) -> tuple[tuple[str, ...], dict]:
    tc = data.get(hk.TEXT_CONFIG)
    if isinstance(tc, dict) and any(k in tc for k in _ROPE_KEYS):
        return (hk.TEXT_CONFIG,), tc
    return (), data


def _block(path: str, where: str, c: dict) -> tuple[str, dict, bool]:
    rs = c.get(hk.ROPE_SCALING)
    rp = c.get(hk.ROPE_PARAMETERS)
    for key, val in ((hk.ROPE_SCALING, rs), (hk.ROPE_PARAMETERS, rp)):
        if val is not None and not isinstance(val, dict):
            raise FormatError(
                f"{path}: {where}{key} must be an object or null, found {json.dumps(val)[:40]}; "
                f"fix config.json"
            )
    if rs:
        return hk.ROPE_SCALING, rs, True
    if isinstance(rp, dict):
        return hk.ROPE_PARAMETERS, rp, bool(rp)
    return hk.ROPE_SCALING, {}, False


def _model_type(path: str, where: str, c: dict, data: dict) -> str:
    model_type = c.get(hk.MODEL_TYPE) or data.get(hk.MODEL_TYPE) or "unknown"
    if not isinstance(model_type, str):
        raise FormatError(f"{path}: {where}model_type must be a string, found {json.dumps(model_type)[:40]}")
    if any(n in NO_ROPE_ARCHS for n in _arch_candidates(model_type)):
        raise UnsupportedModelError(
            f"{path}: model_type {model_type!r} does not use rotary position embeddings; "
            f"there is nothing for ropepatch to extend"
        )
    return model_type


def _check_single_block(path: str, where: str, block_key: str, block: dict) -> None:
    nested = [k for k, v in block.items() if isinstance(v, dict) or (v is None and k.endswith("attention"))]
    if nested and not any(
        k in block for k in (hk.RS_ROPE_TYPE, hk.RS_TYPE_LEGACY, hk.ROPE_THETA, hk.RS_FACTOR)
    ):
        raise UnsupportedModelError(
            f"{path}: {where}{block_key} holds per-layer-type settings ({', '.join(nested)}); "
            f"ropepatch only patches a single rope block: edit config.json by hand"
        )


def _theta(path: str, where: str, bw: str, c: dict, block: dict) -> float:
    if hk.ROPE_THETA in block:
        theta, theta_at = block[hk.ROPE_THETA], f"{bw}{hk.ROPE_THETA}"
    elif hk.ROPE_THETA not in c and hk.ROTARY_EMB_BASE in c:
        theta, theta_at = c[hk.ROTARY_EMB_BASE], f"{where}{hk.ROTARY_EMB_BASE}"
    else:
        theta, theta_at = c.get(hk.ROPE_THETA), f"{where}{hk.ROPE_THETA}"
    if theta is None:
        raise FormatError(
            f"{path}: no rope_theta (expected a positive number at {where}rope_theta or "
            f"{bw}rope_theta, found none); add the model's rope_theta to config.json"
        )
    if not _is_num(theta) or theta <= 1:
        raise FormatError(f"{path}: {theta_at} must be a number > 1, found {json.dumps(theta)[:40]}")
    return float(theta)


def _max_pos(path: str, where: str, c: dict) -> int:
    mpe = c.get(hk.MAX_POSITION_EMBEDDINGS)
    if not _is_int(mpe) or mpe <= 0:
        what = "none" if mpe is None else json.dumps(mpe)[:40]
        raise FormatError(
            f"{path}: {where}max_position_embeddings must be a positive integer, found {what}; "
            f"add the model's training context to config.json"
        )
    return _bounded(path, f"{where}max_position_embeddings", mpe, MAX_CONTEXT)


def _head_dim(path: str, where: str, c: dict) -> int:
    head_dim = c.get(hk.HEAD_DIM)
    if head_dim is None:
        hs, nh = c.get(hk.HIDDEN_SIZE), c.get(hk.NUM_ATTENTION_HEADS)
        if not (_is_int(hs) and _is_int(nh) and hs > 0 and nh > 0):
            raise FormatError(
                f"{path}: cannot derive the head size: expected {where}head_dim or "
                f"{where}hidden_size and {where}num_attention_heads as positive integers, found "
                f"head_dim=None, hidden_size={json.dumps(hs)[:40]}, num_attention_heads={json.dumps(nh)[:40]}"
            )
        _bounded(path, f"{where}hidden_size", hs, MAX_DIM)
        return hs // _bounded(path, f"{where}num_attention_heads", nh, MAX_DIM)
    if not _is_int(head_dim) or head_dim <= 0:
        raise FormatError(f"{path}: {where}head_dim must be a positive integer, found {json.dumps(head_dim)[:40]}")
    return _bounded(path, f"{where}head_dim", head_dim, MAX_DIM)


def _partial_rotary(path: str, c: dict, block: dict, model_type: str) -> float:
    prf = block.get(hk.PARTIAL_ROTARY_FACTOR, c.get(hk.PARTIAL_ROTARY_FACTOR, c.get(hk.ROTARY_PCT)))
    if prf is None:
        prf = hk.MODEL_PARTIAL_ROTARY_DEFAULT.get(model_type, 1.0)
    if not _is_num(prf) or not 0 < prf <= 1:
        raise FormatError(
            f"{path}: partial_rotary_factor must be a number in (0, 1], found {json.dumps(prf)[:40]}"
        )
    return float(prf)


def _scaling(path: str, bw: str, c: dict, block: dict) -> dict:
    """The scaling fields of HFRope: rope_type, factor, original_max_position_embeddings,
    attention_factor."""
    rope_type = block.get(hk.RS_ROPE_TYPE, block.get(hk.RS_TYPE_LEGACY, hk.RT_DEFAULT))
    if not isinstance(rope_type, str):
        raise FormatError(f"{path}: {bw}rope_type must be a string, found {json.dumps(rope_type)[:40]}")
    factor = block.get(hk.RS_FACTOR)
    if factor is not None and (not _is_num(factor) or factor <= 0):
        raise FormatError(f"{path}: {bw}factor must be a positive number, found {json.dumps(factor)[:40]}")
    if factor is not None and factor > MAX_FACTOR:
        raise FormatError(f"{path}: {bw}factor must be at most {MAX_FACTOR:g}, found {factor:g}; fix config.json")
    omp = block.get(hk.RS_ORIG_MAX_POS)
    if rope_type in _ORIG_CTX_TYPES and _is_int(c.get(hk.RS_ORIG_MAX_POS)):
        omp = c[hk.RS_ORIG_MAX_POS]  # transformers prefers the top-level value (Phi-3)
    if omp is not None and (not _is_int(omp) or omp <= 0):
        raise FormatError(
            f"{path}: {bw}original_max_position_embeddings must be a positive integer, found "
            f"{json.dumps(omp)[:40]}"
        )
    if omp is not None:
        _bounded(path, f"{bw}original_max_position_embeddings", omp, MAX_CONTEXT)
    att = block.get(hk.RS_ATTENTION_FACTOR)
    return {"rope_type": rope_type, "factor": float(factor) if factor is not None else None,
            "original_max_position_embeddings": omp,
            "attention_factor": float(att) if _is_num(att) else None}


def read_rope(doc: ConfigDoc) -> HFRope:
    """The rope settings ``doc`` states (FormatError naming the missing or odd field)."""
    path, data = doc.path, doc.data
    section, c = _section(data)
    where = "".join(s + "." for s in section)
    model_type = _model_type(path, where, c, data)
    block_key, block, present = _block(path, where, c)
    bw = f"{where}{block_key}."
    _check_single_block(path, where, block_key, block)
    theta = _theta(path, where, bw, c, block)
    mpe = _max_pos(path, where, c)
    head_dim = _head_dim(path, where, c)
    prf = _partial_rotary(path, c, block, model_type)
    return HFRope(
        config_path=path,
        model_type=model_type,
        section=section,
        block_key=block_key,
        block_present=present,
        rope_theta=theta,
        max_position_embeddings=mpe,
        head_dim=head_dim,
        partial_rotary_factor=prf,
        rope_dim=int(head_dim * prf),
        **_scaling(path, bw, c, block),
        block=dict(block),
        layout=hf_layout(model_type),
    )


def check_composable_hf(rope: HFRope, method: str, replace_scaling: bool = False) -> None:
    """Refuse to stack ``method`` on a scaling the config already has (unless replacing it).

    Refused always: multimodal rotary sections (mrope / mrope_section) and rope types ropepatch
    does not know (dropping them would break the model). Refused unless ``replace_scaling``:
    any configured scaling (linear/dynamic/yarn with factor != 1, llama3, longrope).
    """
    p, where = rope.config_path, f"{rope.where}{rope.block_key}"
    block = rope.block or {}
    if rope.rope_type == hk.RT_MROPE or hk.RS_MROPE_SECTION in block:
        raise UnsupportedModelError(
            f"{p}: {where} uses multimodal rotary sections (mrope_section); ropepatch cannot "
            f"rewrite it without breaking the vision positions: edit config.json by hand"
        )
    allowed = hk.MODEL_ROPE_TYPES.get(rope.model_type)
    wants = hk.METHOD_ROPE_TYPE.get(method, hk.RT_DEFAULT)
    if allowed is not None and wants not in allowed:
        raise UnsupportedModelError(
            f"{p}: transformers' {rope.model_type} config accepts rope_type "
            f"{' or '.join(sorted(allowed))} only, and {method} writes {wants!r}: use --method ntk "
            f"(it changes rope_theta only)"
        )
    if not rope.is_scaled:
        return
    if rope.rope_type not in hk.REPLACEABLE_ROPE_TYPES:
        raise UnsupportedModelError(
            f"{p}: {where}.rope_type is {rope.rope_type!r}, which ropepatch does not know how to "
            f"replace; expected default, linear, dynamic, yarn, llama3 or longrope: edit "
            f"config.json by hand"
        )
    if replace_scaling:
        return
    fac = f"factor {rope.factor:g}" if rope.factor is not None else "no factor"
    raise UnsupportedModelError(
        f"{p}: {where}.rope_type is {rope.rope_type!r} ({fac}); {method} cannot compose with an "
        f"existing {rope.rope_type} scaling: ropepatch hf --replace-scaling (replace_scaling=True) "
        f"discards it and applies {method} to the unscaled model (original context {rope.orig_ctx})"
    )


def unscaled_params(rope: HFRope) -> RopeParams:
    """The model before any scaling: L = :attr:`HFRope.orig_ctx`, the plain base, d."""
    return RopeParams(
        arch=rope.model_type,
        n_ctx_train=rope.orig_ctx,
        rope_dim=rope.rope_dim,
        head_dim=rope.head_dim,
        freq_base=rope.rope_theta,
        layout=rope.layout,
    )

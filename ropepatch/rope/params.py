"""RopeParams: the one value that flows from reader to math to writer to verifier, and the
enums it is made of (values are the on-disk / runtime values)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class ScalingType(str, Enum):
    """Values of ``{arch}.rope.scaling.type`` that llama.cpp accepts (any other aborts the load)."""

    NONE = "none"
    LINEAR = "linear"
    YARN = "yarn"
    LONGROPE = "longrope"


class RopeLayout(str, Enum):
    """How rotary pairs are formed: NORM pairs (2i, 2i+1); NEOX pairs (i, i + d/2)."""

    NORM = "norm"
    NEOX = "neox"
    MROPE = "mrope"  # multi-section (vision-language), NEOX pairing
    UNKNOWN = "unknown"


# llama_rope_scaling_type in llama.h (the value llama-cpp-python's rope_scaling_type takes)
LLAMA_ROPE_SCALING_TYPE = {"none": 0, "linear": 1, "yarn": 2, "longrope": 3}


@dataclass(frozen=True)
class RopeParams:
    """A model's rotary-embedding settings, as llama.cpp would apply them.

    Field names follow the GGUF keys; the derived properties follow the ggml ROPE op's
    parameters (``freq_scale``, ``ext_factor``), so a verifier can compare either side.
    """

    arch: str
    n_ctx_train: int  # {arch}.context_length: what the runtime reports as training ctx
    rope_dim: int  # d: rotated dims per head ({arch}.rope.dimension_count)
    head_dim: int  # per-head dims; dims rope_dim..head_dim-1 pass through unrotated
    freq_base: float  # b
    scaling_type: ScalingType = ScalingType.NONE
    scaling_factor: float = 0.0  # 0 = none; freq_scale = 1/factor
    orig_ctx: int = 0  # YaRN's L (scaling.original_context_length); 0 = n_ctx_train
    attn_factor: float = 1.0  # {arch}.rope.scaling.attn_factor
    layout: RopeLayout = RopeLayout.NORM
    has_freq_factors: bool = False  # per-pair divisors (rope_freqs tensor: llama3 / longrope)
    # the per-pair divisors themselves (rope_freqs.weight, float32 values, rope_dim/2 of them):
    # () = none, or not read (longrope's rope_factors_long/short)
    freq_factors: tuple[float, ...] = ()

    @property
    def freq_scale(self) -> float:
        """The position multiplier ggml applies (1/factor), 1 when scaling is none."""
        if self.scaling_type == ScalingType.NONE or self.scaling_factor in (0.0, 1.0):
            return 1.0
        return 1.0 / self.scaling_factor

    @property
    def ext_factor(self) -> float:
        """YaRN extrapolation mix factor as llama.cpp defaults it: 1 for yarn, else 0."""
        return 1.0 if self.scaling_type == ScalingType.YARN else 0.0

    @property
    def n_ctx_orig(self) -> int:
        """The original context YaRN's correction dims are computed from."""
        return self.orig_ctx or self.n_ctx_train

    @property
    def is_scaled(self) -> bool:
        """True when the file asks for positional scaling beyond a plain base."""
        return self.freq_scale != 1.0 or self.has_freq_factors

    def with_(self, **changes) -> "RopeParams":
        """A copy with some fields changed."""
        return replace(self, **changes)

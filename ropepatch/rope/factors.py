"""Per-pair frequency factors: the divisors ``ff_i`` llama.cpp applies through the
``rope_freqs.weight`` tensor (ggml ROPE: ``theta_i = m * b^(-2i/d) / ff_i``), as pure math.

Notation: d = rotated dims, n = d/2 pairs, i = pair index (0 = highest frequency), b = base,
L = original training context, s = N / L. stdlib only; every value is rounded to float32,
because that is what the tensor stores and what the runtime divides by.
"""

from __future__ import annotations

import math
import struct
from typing import Sequence

from ropepatch.errors import UsageError

DEFAULT_BETA_FAST = 32.0  # YaRN paper: dims turning more than 32 times in L extrapolate
DEFAULT_BETA_SLOW = 1.0  # ... and dims turning less than once in L interpolate
DEFAULT_POINTS = 8  # control points of a `factors` profile started from the ntk-parts ramp
ATTN_FACTOR_HELP = ("attention temperature M: llama.cpp multiplies cos and sin by M (attention logits by M^2), "
                    "written as rope.scaling.attn_factor; 1 = none, YaRN's is 1 + 0.1 ln s")


def f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (what rope_freqs.weight holds)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def correction_dim(rope_dim: int, base: float, orig_ctx: int, rotations: float) -> float:
    """YaRN's correction dim: the dim index whose pair turns ``rotations`` times in ``orig_ctx``
    tokens, ``d * ln(L / (r * 2 pi)) / (2 ln b)`` (ggml_rope_yarn_corr_dim)."""
    return rope_dim * math.log(orig_ctx / (rotations * 2 * math.pi)) / (2 * math.log(base))


def ramp_range(rope_dim: int, base: float, orig_ctx: int, beta_fast: float, beta_slow: float
               ) -> tuple[float, float]:
    """``(low, high)``: ggml_rope_yarn_corr_dims -- floor/ceil of the two correction dims,
    clamped to [0, d-1]."""
    low = math.floor(correction_dim(rope_dim, base, orig_ctx, beta_fast))
    high = math.ceil(correction_dim(rope_dim, base, orig_ctx, beta_slow))
    return float(max(0, low)), float(min(rope_dim - 1, high))


def ntk_parts_factors(rope_dim: int, base: float, orig_ctx: int, scale: float,
                      beta_fast: float = DEFAULT_BETA_FAST, beta_slow: float = DEFAULT_BETA_SLOW,
                      ) -> tuple[float, ...]:
    """NTK-by-parts (YaRN paper, section 3.2) as per-pair divisors, no attention temperature.

    Per pair i: ``ramp = 1 - clamp((i - low) / max(0.001, high - low), 0, 1)`` (1 = extrapolate,
    the high frequencies; 0 = interpolate by s, the low ones); the frequency becomes
    ``theta_i * ((1 - ramp) / s + ramp)`` -- exactly ggml's YaRN mix with ext_factor 1 -- so the
    divisor is its inverse."""
    if not (math.isfinite(scale) and scale >= 1.0):
        raise UsageError(f"ntk-parts: the scale must be a finite number >= 1, found {scale}")
    if not (math.isfinite(beta_fast) and math.isfinite(beta_slow) and beta_fast > beta_slow > 0):
        raise UsageError(f"ntk-parts: expected beta_fast > beta_slow > 0, found beta_fast {beta_fast:g}, "
                         f"beta_slow {beta_slow:g}")
    low, high = ramp_range(rope_dim, base, orig_ctx, beta_fast, beta_slow)
    out = []
    for i in range(rope_dim // 2):
        ramp = 1.0 - min(1.0, max(0.0, (i - low) / max(0.001, high - low)))  # 1 = keep theta
        out.append(f32(1.0 / ((1.0 - ramp) / scale + ramp)))  # divisor: 1 .. s
    return tuple(out)


def yarn_attn_factor(scale: float) -> float:
    """YaRN's attention temperature for scale s: 1 + 0.1 ln s (1 for s <= 1)."""
    return 1.0 if scale <= 1.0 else 1.0 + 0.1 * math.log(scale)


def check_attn_factor(m) -> float:
    """A `factors` attention temperature: a finite number between 0.5 and 2."""
    try:
        m = float(m)
    except (TypeError, ValueError):
        raise UsageError(f"--attn-factor: expected a number between 0.5 and 2, found {m!r}") from None
    if not (math.isfinite(m) and 0.5 <= m <= 2.0):
        raise UsageError(f"--attn-factor: expected a finite number between 0.5 and 2 (YaRN's is 1 + 0.1 ln s), "
                         f"found {m:g}")
    return m


def check_points(points: Sequence[float], n_pairs: int) -> tuple[float, ...]:
    """A `factors` profile's control points: 2 .. n_pairs finite divisors, each >= 1, never
    decreasing (a lower frequency is never stretched less than a higher one: LongRoPE's
    monotone constraint)."""
    pts = tuple(float(p) for p in points)
    if not 2 <= len(pts) <= n_pairs:
        raise UsageError(f"--factors: expected 2 to {n_pairs} comma-separated control points, found {len(pts)}")
    bad = [p for p in pts if not (math.isfinite(p) and 1.0 <= p <= 1e6)]
    if bad:
        raise UsageError(f"--factors: expected divisors between 1 and 1e6, found {bad[0]:g}")
    if any(b < a for a, b in zip(pts, pts[1:])):
        raise UsageError(f"--factors: control points must never decrease (high to low frequency), "
                         f"found {','.join(f'{p:g}' for p in pts)}")
    return pts


def profile_factors(n_pairs: int, points: Sequence[float]) -> tuple[float, ...]:
    """Per-pair divisors from control points placed evenly over pairs 0 .. n-1, interpolated
    linearly in log space (so a profile of equal ratios stays geometric)."""
    pts = check_points(points, n_pairs)
    k = len(pts) - 1
    out = []
    for i in range(n_pairs):
        x = i * k / (n_pairs - 1)  # position among the control points
        j = min(int(x), k - 1)
        t = x - j  # 0 .. 1 between point j and j+1
        out.append(f32(math.exp((1 - t) * math.log(pts[j]) + t * math.log(pts[j + 1]))))
    return tuple(out)


def sample_points(factors: Sequence[float], count: int = DEFAULT_POINTS) -> tuple[float, ...]:
    """``count`` control points read off a per-pair profile at the positions
    :func:`profile_factors` places them (made non-decreasing): where a search starts."""
    n = len(factors)
    count = max(2, min(count, n))
    pts, top = [], 1.0
    for j in range(count):
        top = max(top, float(factors[round(j * (n - 1) / (count - 1))]))
        pts.append(f32(top))
    return tuple(pts)


def compose(old: Sequence[float], new: Sequence[float]) -> tuple[float, ...]:
    """Factors already in the file times the new ones (the runtime divides by the product)."""
    if old and len(old) != len(new):
        raise UsageError(f"the file's rope_freqs has {len(old)} factors, the plan {len(new)}")
    return tuple(new) if not old else tuple(f32(a * b) for a, b in zip(old, new))


def parse_points(spec: str) -> tuple[float, ...]:
    """``"1,1,1.5,2"`` -> control points (numbers only; :func:`check_points` checks the rest)."""
    try:
        return tuple(float(s) for s in spec.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--factors: expected comma-separated numbers such as 1,1.2,2,2.5, found {spec!r}") from None

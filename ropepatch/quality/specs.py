"""Which methods a measurement scores: ``--methods`` / ``--alpha`` parsed into
:class:`MethodSpec` values, and the ``window`` baseline's name (spelled here, once)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ropepatch.errors import UsageError
from ropepatch.rope.methods import METHODS, get_method

WINDOW = "window"  # the sliding-window baseline's method name
UNSCALED = "none"  # the registry's no-scaling method: tune's baseline, what the window baseline runs
DEFAULT_METHODS = (UNSCALED, "linear", "ntk", "dynamic", "yarn")


@dataclass(frozen=True)
class MethodSpec:
    """A method to evaluate: ``label`` is how it is reported."""

    label: str
    method: str  # a registry name or "window"
    alpha: float | None = None
    options: tuple[tuple[str, Any], ...] = ()  # method options (e.g. the points of ``factors``)


def takes_alpha(method: str) -> bool:
    """Does ``method`` (a registry name or ``window``) use an alpha?"""
    return method != WINDOW and get_method(method).takes_alpha


def _split(spec: str | Sequence[str] | None) -> list[str]:
    if spec is None:
        return list(DEFAULT_METHODS)
    if isinstance(spec, str):
        return [s.strip() for s in spec.split(",") if s.strip()]
    return [str(s).strip() for s in spec]


def _spec(item: str, alphas: Mapping[str, float] | float | None) -> MethodSpec:
    name, _, a = item.partition("@")
    name = name.strip().lower()
    if name != WINDOW and name not in METHODS:
        raise UsageError(
            f"--methods: unknown method {name!r}: expected some of {', '.join([*METHODS, WINDOW])}"
        )
    alpha: float | None = None
    if a:
        try:
            alpha = float(a)
        except ValueError:
            raise UsageError(f"--methods: {item!r}: expected METHOD@ALPHA with a number") from None
    elif isinstance(alphas, Mapping):
        alpha = alphas.get(name)
    elif alphas is not None:
        alpha = float(alphas)
    if not takes_alpha(name):
        alpha = None
    if alpha is not None and not (math.isfinite(alpha) and alpha >= 1.0):
        raise UsageError(f"--alpha for {name}: expected a finite number >= 1, found {alpha}")
    return MethodSpec(item.strip().lower() if a else name, name, alpha)


def parse_methods(spec: str | Sequence[str] | None, alphas: Mapping[str, float] | float | None = None,
                  ) -> list[MethodSpec]:
    """``"none,ntk,ntk@2.5,yarn"`` -> specs. ``alphas``: one value for every scaled method, or
    a mapping method -> alpha (for methods given without ``@alpha``)."""
    items = _split(spec)
    if not items:
        raise UsageError("--methods: expected a comma-separated list of methods, found nothing")
    out: list[MethodSpec] = []
    for item in items:
        s = _spec(item, alphas)
        if not any(o.label == s.label for o in out):
            out.append(s)
    return out


def resolve_specs(methods: str | Sequence[str] | Sequence[MethodSpec] | None,
                  alphas: Mapping[str, float] | float | None, window: bool, *,
                  empty_ok: bool = False) -> list[MethodSpec]:
    """The specs to score: ``methods`` as given (a list of :class:`MethodSpec`; an empty list
    only when ``empty_ok``) or parsed with ``alphas``, plus the ``window`` baseline when
    ``window`` and it is not already there."""
    given = methods if empty_ok else (methods or None)
    if given is not None and not isinstance(given, str) and all(isinstance(m, MethodSpec) for m in given):
        specs = list(given)
    else:
        specs = parse_methods(methods, alphas)
    if window and not any(s.method == WINDOW for s in specs):
        specs.append(MethodSpec(WINDOW, WINDOW))
    return specs


def parse_alphas(spec: str | None) -> float | dict[str, float] | None:
    """``--alpha 2.5`` (every scaled method) or ``--alpha ntk=2.5,yarn=2``."""
    if spec is None or str(spec).strip() == "":
        return None
    s = str(spec)
    if "=" not in s:
        try:
            return float(s)
        except ValueError:
            raise UsageError(f"--alpha: expected a number or METHOD=A[,METHOD=A...], found {s!r}") from None
    out: dict[str, float] = {}
    for part in s.split(","):
        k, _, v = part.partition("=")
        try:
            out[k.strip().lower()] = float(v)
        except ValueError:
            raise UsageError(f"--alpha: {part!r}: expected METHOD=NUMBER") from None
    return out

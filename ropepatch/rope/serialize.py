"""Plain JSON values from the library's result objects (stdlib only).

:func:`jsonable` is the one converter every ``--json`` output and report uses.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, is_dataclass
from enum import Enum


def jsonable(x):
    """``x`` as plain JSON values: enums by value, dataclasses as dicts, tuples as lists,
    dict keys as strings, NumPy scalars and arrays (duck-typed: ``.tolist()``) as Python
    numbers and lists, non-finite floats as strings ("inf", "-inf", "nan")."""
    if isinstance(x, Enum):
        return x.value
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if is_dataclass(x) and not isinstance(x, type):  # e.g. a GGUF array value
        return jsonable(asdict(x))
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        x = float(x)
        return x if math.isfinite(x) else str(x)
    if hasattr(x, "tolist"):  # a NumPy array, or a scalar of another kind (np.bool_)
        return jsonable(x.tolist())
    return x

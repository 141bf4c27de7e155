"""The one JSON sanitiser: any value lesionflow writes as JSON → plain, strict-JSON python.

Used for sidecars (:mod:`pipeline.io.writers`), the quality results and report summary
(:mod:`pipeline.quality`) and the command line's ``--json``. The output always passes
``json.dumps(..., allow_nan=False)``:

* mappings → ``dict`` with ``str`` keys; lists, tuples, sets and other sequences → ``list``;
* numpy scalars → python scalars, numpy arrays → nested lists;
* ``NaN`` / ``±inf`` (python, numpy, pandas ``NA``/``NaT``) → ``None``;
* ``Path`` → ``str``; ``datetime`` / ``date`` / ``time`` → ISO 8601 text; ``Enum`` → its value;
* ``Decimal`` → ``float``; ``bytes`` → ``None`` (binary never goes into JSON);
* subclasses of ``str`` / ``int`` / ``float`` (pydicom's ``UID``, ``IS``, ``DSfloat``…) → the
  plain type; pydantic models → their JSON-mode dump; anything else → ``str(value)``.

Example:
    >>> import math, numpy as np
    >>> from pathlib import Path
    >>> to_jsonable({"a": np.float32(0.5), "b": [math.nan, np.int64(3)], "p": Path("/x/y"), 1: np.arange(2)})
    {'a': 0.5, 'b': [None, 3], 'p': '/x/y', '1': [0, 1]}
"""

from __future__ import annotations

import datetime as _dt
import enum
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import PurePath
from typing import Any

import numpy as np

__all__ = ["to_jsonable"]


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON-safe python (see the module docstring for the rules)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _numpy_scalar(value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if _is_missing(value):  # before the datetime rule: pandas' NaT is a datetime
        return None
    if isinstance(value, Mapping):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return to_jsonable(float(value))
    if hasattr(value, "model_dump") and callable(value.model_dump):  # pydantic models
        return to_jsonable(value.model_dump(mode="json"))
    if isinstance(value, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(value, key=repr)]
    if isinstance(value, Iterable):
        return [to_jsonable(v) for v in value]
    return str(value)


def _numpy_scalar(value: np.generic) -> Any:
    if isinstance(value, np.datetime64):
        return None if np.isnat(value) else str(value)
    if isinstance(value, np.timedelta64):
        return None if np.isnat(value) else value.astype("timedelta64[ns]").astype(np.int64) / 1e9
    return to_jsonable(value.item())


def _is_missing(value: Any) -> bool:
    """pandas' scalar missing values (``pd.NA``, ``pd.NaT``) without importing pandas."""
    module = type(value).__module__ or ""
    if not module.startswith("pandas"):
        return False
    try:
        import pandas as pd

        return bool(pd.isna(value)) if np.ndim(value) == 0 else False
    except (TypeError, ValueError):
        return False

"""Parsers of comma-separated command-line values, for argparse's ``type=``.

Each turns ``"a,b,c"`` into a tuple, allowing blanks around items and skipping empty items (a
trailing comma); an item that does not parse, or a list with no item, is an
``argparse.ArgumentTypeError`` that names the offending item, which argparse prints after the
option's name.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def int_list(text: str) -> tuple[int, ...]:
    """``"784,256,10"`` → ``(784, 256, 10)``."""
    return _items(text, int, "integers", "784,256,10", "an integer")


def float_list(text: str) -> tuple[float, ...]:
    """``"0.1,1e-3"`` → ``(0.1, 0.001)``; NaN and ±inf are refused."""
    return _items(text, _finite_float, "numbers", "0.1,1e-3", "a finite number")


def _finite_float(item: str) -> float:
    value = float(item)
    if not math.isfinite(value):
        raise ValueError(item)
    return value


def _items(text: str, convert: Callable[[str], T], kinds: str, example: str, kind: str
           ) -> tuple[T, ...]:
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kinds} such as {example}, "
                                         f"got {text!r} (no value)")
    out = []
    for item in items:
        try:
            out.append(convert(item))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kinds} such as {example}, got {text!r} "
                f"({item!r} is not {kind})") from None
    return tuple(out)

"""Argument checks shared by the components: each error names the argument."""

import math
import numbers


def positive_finite(value, name):
    """`value` as a float, or ValueError unless it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
    return value


def non_negative_finite(value, name):
    """`value` as a float, or ValueError unless it is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    return value


def positive_int(value, name):
    """`value` as an int, or ValueError unless it is an integer > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"`{name}` must be an integer > 0, got {value!r}.")
    return int(value)

"""GlorotNormalInitializer: normal draws with stddev sqrt(2 / (fan_in + fan_out))."""

import numbers
import random

import keras
import numpy as np


def compute_fans(shape):
    """(fan_in, fan_out) as Keras counts them: a conv kernel multiplies by its receptive field."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive_field = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive_field, shape[-1] * receptive_field


@keras.saving.register_keras_serializable(package="fastcustom")
class GlorotNormalInitializer(keras.initializers.Initializer):
    """Draws N(0, sqrt(2 / (fan_in + fan_out))^2), not truncated.

    With an integer `seed` every call draws the same values; with None each
    instance draws from a seed of its own.

    >>> w = GlorotNormalInitializer(seed=1)((300, 100))
    >>> round(float(w.numpy().std()), 2)      # sqrt(2 / 400) = 0.0707
    0.07
    """

    def __init__(self, seed=None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ValueError(f"`seed` must be an int or None, got {seed!r}.")
        seed = None if seed is None else int(seed)  # np.int64 too; a plain int in the config
        self.seed = seed
        self._draw_seed = seed if seed is not None else random.randint(1, 2**31 - 1)

    def __call__(self, shape, dtype=None):
        fan_in, fan_out = compute_fans(shape)
        stddev = np.sqrt(2.0 / max(1, fan_in + fan_out))
        return keras.random.normal(shape, stddev=stddev, dtype=dtype, seed=self._draw_seed)

    def get_config(self):
        return {"seed": self.seed}

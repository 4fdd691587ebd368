"""HuberMetric: the streaming, sample-weighted mean of the per-element Huber value.

    result = sum(w * h(y_true - y_pred)) / sum(w)     over every element seen

The running total and weight live in float64 variables, and each batch's sums
arrive in float64 from the kernel, so the mean does not drift: Keras's `Mean`
keeps float32 state, whose total stops absorbing small batches once it is
large (see tests/test_metrics.py, which streams 10^9 elements).
"""

import keras
import tensorflow as tf

from fastcustom import private_symbols
from fastcustom._validation import positive_finite
from fastcustom.ops.huber import huber_weighted_total
from fastcustom.ops.inputs import apply_mask


@keras.saving.register_keras_serializable(package="fastcustom")
class HuberMetric(keras.metrics.Metric):
    """Streaming mean of `h(y_true - y_pred)` per element, weighted by `sample_weight`.

    A weight per sample weighs each of its elements, as `keras.metrics.Mean`
    over `keras.losses.huber` does; a Keras mask on `y_pred` zeroes weights.

    >>> import numpy as np
    >>> metric = HuberMetric(threshold=1.0)
    >>> metric.update_state(np.array([[0.0, 1.0]]), np.array([[0.6, 0.4]]))
    >>> metric.update_state(np.array([[0.0]]), np.array([[3.0]]))
    >>> round(float(metric.result()), 4)    # (0.18 + 0.18 + 2.5) / 3
    0.9533
    """

    def __init__(self, threshold=1.0, name="huber_metric", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = positive_finite(threshold, "threshold")
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float64",
                                       name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float64",
                                       name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        sample_weight = apply_mask(sample_weight, private_symbols.keras_mask(y_pred),
                                   self.dtype)
        with tf.name_scope(self.name):   # a profile names the metric's ops after it
            y_pred = tf.cast(y_pred, self.dtype)
            y_true = tf.cast(y_true, self.dtype)
            total, count = huber_weighted_total(y_true, y_pred, self.threshold, sample_weight)
            self.total.assign_add(total)
            self.count.assign_add(count)

    def result(self):
        return tf.cast(tf.math.divide_no_nan(self.total, self.count), self.dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "threshold": self.threshold}

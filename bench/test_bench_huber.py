"""Huber benchmarks: loss forward, forward + gradient, metric update; and the read ceiling.

Every implementation computes the same thing on the same fresh random float32
inputs (y_true, y_pred ~ N(0, 1), so both branches of h are taken):
forward = the mean Huber loss (a scalar), forward + gradient = that scalar and
d/dy_pred, metric update = one `update_state` of a streaming Huber mean.
Work per call, for the roofline: both inputs read (+ the gradient written).
"""

import concurrent.futures
import functools
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastcustom
from fastcustom import reference
from fastcustom.bench import case_info, ceiling_info
from fastcustom.bench.cases import SIZES
from fastcustom.ops.huber import (huber_mean_tf, huber_mean_with_grad_tf, huber_per_sample_tf,
                                  huber_weighted_total_tf)
from fastcustom.baselines import notes

SHAPES = {"small": (32, 1), "medium": (16384, 16), "large": (500000, 16)}
THRESHOLD = 1.0


@functools.lru_cache(maxsize=None)
def _arrays(size):
    rng = np.random.default_rng(20240 + SIZES.index(size))
    shape = SHAPES[size]
    return (rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32))


class Inputs:
    """One size's (y_true, y_pred) as NumPy, TF (on the current device), torch or JAX arrays."""

    def __init__(self, size, device):
        self.size, self.device = size, device
        self.np_true, self.np_pred = _arrays(size)
        self.n = self.np_true.size

    def tf(self):
        return tf.identity(self.np_true), tf.identity(self.np_pred)

    def torch(self):
        torch, where = self.device.torch()
        return (torch, torch.from_numpy(self.np_true).to(where),
                torch.from_numpy(self.np_pred).to(where))

    def jax(self):
        jax, optax, where = self.device.jax()
        return jax, optax, jax.device_put(self.np_true, where), jax.device_put(self.np_pred, where)


def _mean_huber(y_true, y_pred):
    return tf.reduce_mean(huber_per_sample_tf(y_true, y_pred, THRESHOLD))


def _tape(loss_fn, y_true, y_pred):
    """(loss, d loss / d y_pred), differentiated eagerly (or traced inside a tf.function)."""
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        value = loss_fn(y_true, y_pred)
    return value, tape.gradient(value, y_pred)


def _with_threshold_tensor(fn):
    """`fn(y_true, y_pred, threshold)` with THRESHOLD as a float64 tensor, made once."""
    threshold = tf.constant(THRESHOLD, tf.float64)
    return lambda y_true, y_pred: fn(y_true, y_pred, threshold)


def _on_xla_path(loss_fn):
    """`loss_fn` called inside `fastcustom.use_path("xla")`."""
    def call(y_true, y_pred):
        with fastcustom.use_path("xla"):
            return loss_fn(y_true, y_pred)
    return call


def _best_xla_form_mean(y_true, y_pred):
    """q = min(|e|, t); mean(q (|e| - q/2), -1) in float32, then the mean."""
    abs_error = tf.abs(y_true - y_pred)
    clipped = tf.minimum(abs_error, THRESHOLD)
    return tf.reduce_mean(tf.reduce_mean(clipped * (abs_error - 0.5 * clipped), axis=-1))


def _mean_huber_and_grad(y_true, y_pred):
    return _tape(_mean_huber, y_true, y_pred)


# --- forward: the mean loss ---------------------------------------------------
def _forward_tf(loss_fn):
    def make(inputs):
        y_true, y_pred = inputs.tf()
        return (lambda: loss_fn(y_true, y_pred)), "tf"
    return make


def _forward_fused(inputs):
    ops = inputs.device.fused_huber_ops()
    y_true, y_pred = inputs.tf()
    threshold = tf.constant(THRESHOLD, tf.float64)
    return (lambda: tf.reduce_mean(ops.huber_per_sample(y_true, y_pred, threshold))), "tf"


def _forward_numpy(inputs):
    inputs.device.require_host()
    return (lambda: reference.huber(inputs.np_true, inputs.np_pred, THRESHOLD).mean()), "numpy"


def _forward_torch(inputs):
    torch, y_true, y_pred = inputs.torch()
    loss = torch.nn.functional.huber_loss
    return (lambda: loss(y_pred, y_true, delta=THRESHOLD)), "torch"


def _forward_jax(inputs):
    jax, optax, y_true, y_pred = inputs.jax()
    loss = jax.jit(lambda p, t: optax.losses.huber_loss(p, t, delta=THRESHOLD).mean())
    return (lambda: loss(y_pred, y_true).block_until_ready()), "jax"


# Each kernel has its table: the report's implementation name -> a builder of that
# implementation's call. The tables, and the parametrized tests that run them, are parallel
# by design (one row per way of computing the kernel), not code to share.
FORWARD = {
    "notes (eager)": lambda inputs: _forward_tf(notes.Huberloss(THRESHOLD))(inputs),
    "keras built-in": lambda inputs: _forward_tf(keras.losses.Huber(THRESHOLD))(inputs),
    "tf.function": lambda inputs: _forward_tf(tf.function(_mean_huber))(inputs),
    "tf.function + XLA": lambda inputs: _forward_tf(
        tf.function(_mean_huber, jit_compile=True))(inputs),
    # What fastcustom runs without the op: HuberLoss on the XLA path, whose mean is one
    # XLA-compiled function (float64 inside).
    "XLA path (eager)": lambda inputs: _forward_tf(
        _on_xla_path(fastcustom.HuberLoss(THRESHOLD)))(inputs),
    # The XLA path's formula alone: its compiled mean called directly, without the
    # Python of HuberLoss and the dispatch around it.
    "XLA path formula (compiled)": lambda inputs: _forward_tf(
        _with_threshold_tensor(tf.function(huber_mean_tf, jit_compile=True)))(inputs),
    # The best XLA formulation in float32 (no t^2/2, one min): the speed the XLA path's
    # formula must stay within 90% of, side by side.
    "best XLA form (float32)": lambda inputs: _forward_tf(
        tf.function(_best_xla_form_mean, jit_compile=True))(inputs),
    "fastcustom": lambda inputs: _forward_tf(fastcustom.HuberLoss(THRESHOLD))(inputs),
    "fused op": _forward_fused,
    "numpy float64": _forward_numpy,
    "torch": _forward_torch,
    "jax + optax": _forward_jax,
}


# --- forward + gradient w.r.t. y_pred -----------------------------------------
def _grad_tf_eager(loss_fn):
    def make(inputs):
        y_true, y_pred = inputs.tf()
        return (lambda: _tape(loss_fn, y_true, y_pred)), "tf"
    return make


def _grad_fused(inputs):
    ops = inputs.device.fused_huber_ops()
    threshold = tf.constant(THRESHOLD, tf.float64)
    return _grad_tf_eager(
        lambda t, p: tf.reduce_mean(ops.huber_per_sample(t, p, threshold)))(inputs)


def _grad_numpy(inputs):
    inputs.device.require_host()
    y_true, y_pred = inputs.np_true, inputs.np_pred
    upstream = np.full(y_pred.shape[:-1], 1.0 / y_pred.shape[0])

    def call():
        return (reference.huber(y_true, y_pred, THRESHOLD).mean(),
                reference.huber_grad_pred(y_true, y_pred, upstream, THRESHOLD))
    return call, "numpy"


def _grad_torch(inputs):
    torch, y_true, y_pred = inputs.torch()
    y_pred = y_pred.clone().requires_grad_(True)
    loss = torch.nn.functional.huber_loss

    def call():
        value = loss(y_pred, y_true, delta=THRESHOLD)
        return value, torch.autograd.grad(value, y_pred)[0]
    return call, "torch"


def _grad_jax(inputs):
    jax, optax, y_true, y_pred = inputs.jax()
    step = jax.jit(jax.value_and_grad(
        lambda p, t: optax.losses.huber_loss(p, t, delta=THRESHOLD).mean()))
    return (lambda: jax.block_until_ready(step(y_pred, y_true))), "jax"


FORWARD_GRADIENT = {
    "notes (eager)": lambda inputs: _grad_tf_eager(notes.Huberloss(THRESHOLD))(inputs),
    "keras built-in": lambda inputs: _grad_tf_eager(keras.losses.Huber(THRESHOLD))(inputs),
    "tf.function": lambda inputs: _forward_tf(tf.function(_mean_huber_and_grad))(inputs),
    "tf.function + XLA": lambda inputs: _forward_tf(
        tf.function(_mean_huber_and_grad, jit_compile=True))(inputs),
    # What fastcustom runs without the op: HuberLoss under a tape, where one XLA-compiled
    # function writes the mean and its gradient (the tape only scales the gradient).
    "XLA path (eager)": lambda inputs: _grad_tf_eager(
        _on_xla_path(fastcustom.HuberLoss(THRESHOLD)))(inputs),
    # That function alone, called directly, without HuberLoss's Python around it.
    "XLA path formula (compiled)": lambda inputs: _forward_tf(_with_threshold_tensor(
        tf.function(huber_mean_with_grad_tf, jit_compile=True)))(inputs),
    # The best XLA formulation in float32, loss and gradient compiled in one function.
    "best XLA form (float32)": lambda inputs: _forward_tf(tf.function(
        functools.partial(_tape, _best_xla_form_mean), jit_compile=True))(inputs),
    # HuberLoss under a tape: one fused pass writes the loss and its gradient.
    "fastcustom": lambda inputs: _grad_tf_eager(fastcustom.HuberLoss(THRESHOLD))(inputs),
    "fastcustom (tf.function)": lambda inputs: _forward_tf(tf.function(
        functools.partial(_tape, fastcustom.HuberLoss(THRESHOLD))))(inputs),
    # The per-sample op and its gradient kernel: two passes.
    "fused op": _grad_fused,
    "numpy float64": _grad_numpy,
    "torch": _grad_torch,
    "jax + optax": _grad_jax,
}


# --- metric update ------------------------------------------------------------
def _metric_tf(new_metric):
    def make(inputs):
        metric = new_metric()
        y_true, y_pred = inputs.tf()
        return (lambda: metric.update_state(y_true, y_pred)), "tf"
    return make


def _metric_keras_mean(inputs):
    metric = keras.metrics.Mean()
    y_true, y_pred = inputs.tf()
    return (lambda: metric.update_state(keras.losses.huber(y_true, y_pred, THRESHOLD))), "tf"


def _metric_compiled(jit_compile):
    def make(inputs):
        total, count = tf.Variable(0.0, dtype=tf.float64), tf.Variable(0.0, dtype=tf.float64)

        @tf.function(jit_compile=jit_compile)
        def update(y_true, y_pred):
            batch_total, batch_count = huber_weighted_total_tf(y_true, y_pred, THRESHOLD, None)
            total.assign_add(batch_total)
            count.assign_add(batch_count)

        y_true, y_pred = inputs.tf()
        return (lambda: update(y_true, y_pred)), "tf"
    return make


def _metric_fused(inputs):
    ops = inputs.device.fused_huber_ops()
    total, count = tf.Variable(0.0, dtype=tf.float64), tf.Variable(0.0, dtype=tf.float64)
    y_true, y_pred = inputs.tf()
    threshold, no_weights = tf.constant(THRESHOLD, tf.float64), tf.zeros([0], y_pred.dtype)

    def call():
        batch_total, batch_count = ops.huber_weighted_total(y_true, y_pred, threshold, no_weights)
        total.assign_add(batch_total)
        count.assign_add(batch_count)
    return call, "tf"


def _metric_numpy(inputs):
    inputs.device.require_host()
    metric = reference.StreamingHuberMean(THRESHOLD)
    return (lambda: metric.update(inputs.np_true, inputs.np_pred)), "numpy"


METRIC_UPDATE = {
    "notes (eager)": _metric_tf(lambda: notes.HuberMetric(THRESHOLD)),
    "notes Mean-based (eager)": _metric_tf(lambda: notes.HuberMeanMetric(THRESHOLD)),
    "keras built-in": _metric_keras_mean,
    "tf.function": _metric_compiled(jit_compile=False),
    "tf.function + XLA": _metric_compiled(jit_compile=True),
    "fastcustom": _metric_tf(lambda: fastcustom.HuberMetric(THRESHOLD)),
    "fused op": _metric_fused,
    "numpy float64": _metric_numpy,
}


def _case(kernel, size, implementation, device, arrays_moved):
    inputs = Inputs(size, device)
    info = case_info(kernel, size, str(list(SHAPES[size])), implementation, device.name,
                     work=arrays_moved * inputs.np_true.nbytes, unit="B", elements=inputs.n)
    return inputs, info


@pytest.mark.parametrize("implementation", list(FORWARD))
@pytest.mark.parametrize("size", SIZES)
def test_huber_forward(measure, device, size, implementation):
    inputs, info = _case("Huber forward", size, implementation, device, arrays_moved=2)
    measure(lambda: FORWARD[implementation](inputs), info)


@pytest.mark.parametrize("implementation", list(FORWARD_GRADIENT))
@pytest.mark.parametrize("size", SIZES)
def test_huber_forward_gradient(measure, device, size, implementation):
    inputs, info = _case("Huber forward + gradient", size, implementation, device,
                         arrays_moved=3)
    measure(lambda: FORWARD_GRADIENT[implementation](inputs), info)


@pytest.mark.parametrize("implementation", list(METRIC_UPDATE))
@pytest.mark.parametrize("size", SIZES)
def test_huber_metric_update(measure, device, size, implementation):
    inputs, info = _case("HuberMetric update", size, implementation, device, arrays_moved=2)
    measure(lambda: METRIC_UPDATE[implementation](inputs), info)


# --- ceiling: how fast this machine reads both large inputs --------------------
_CORES = os.cpu_count() or 1
_READERS = concurrent.futures.ThreadPoolExecutor(_CORES, thread_name_prefix="bench-read")


def _read_all_cores(inputs):
    """max over both inputs, split into one contiguous slice per core (NumPy releases the
    GIL in the reduction): a memory-bound read of every byte, the roof of the kernels."""
    inputs.device.require_host()
    slices = [part for array in (inputs.np_true, inputs.np_pred)
              for part in np.array_split(array.reshape(-1), _CORES)]

    def call():
        return max(_READERS.map(np.max, slices))
    return call, "numpy"


READS = {f"numpy max ({_CORES} threads)": _read_all_cores}


@pytest.mark.parametrize("implementation", list(READS))
def test_read_bandwidth(measure, device, implementation):
    inputs = Inputs("large", device)
    info = ceiling_info("B", implementation, device.name, work=2 * inputs.np_true.nbytes,
                        shape=str(list(SHAPES["large"])))
    measure(lambda: READS[implementation](inputs), info)

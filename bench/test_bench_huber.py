"""Huber benchmarks: loss forward, forward + gradient, metric update; the memory roofs; and
fastcustom against its peers, interleaved.

Every implementation computes the same thing on the same fresh random float32
inputs (y_true, y_pred ~ N(0, 1), so both branches of h are taken):
forward = the mean Huber loss (a scalar), forward + gradient = that scalar and
d/dy_pred, metric update = one `update_state` of a streaming Huber mean.
Work per call (`ARRAYS`), the same for every implementation of a kernel: both
inputs read, and for forward + gradient the gradient written (an implementation
that makes two passes moves more, and is slower for it). Forward and the metric
are judged against a read of both inputs on all cores, forward + gradient against
`np.add(y_true, y_pred, out=gradient)` on all cores: the same reads and writes.
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
from fastcustom.bench.cases import FASTCUSTOM, SIZES
from fastcustom.ops.huber import (huber_mean_tf, huber_mean_with_grad_tf, huber_per_sample_tf,
                                  huber_weighted_total_tf)
from fastcustom.baselines import notes

SHAPES = {"small": (32, 1), "medium": (16384, 16), "large": (500000, 16)}
THRESHOLD = 1.0
# What one call of each kernel must move, in input-sized arrays: (read, written).
ARRAYS = {"Huber forward": (2, 0), "Huber forward + gradient": (2, 1),
          "HuberMetric update": (2, 0)}


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
    # The per-sample op, then TensorFlow's mean (fastcustom runs one op for the mean).
    "fused op (per-sample, then mean)": _forward_fused,
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
    # The per-sample op and its gradient kernel: two passes over the inputs, where
    # fastcustom makes one (HuberMeanWithGrad).
    "fused ops, two passes": _grad_fused,
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
    "fused op (weighted total)": _metric_fused,
    "numpy float64": _metric_numpy,
}


def bytes_moved(kernel, size):
    """(bytes read, bytes written) by one call of `kernel` at `size`, any implementation."""
    read, written = ARRAYS[kernel]
    array = int(np.prod(SHAPES[size])) * np.dtype(np.float32).itemsize
    return read * array, written * array


def _case(kernel, size, implementation, device):
    inputs = Inputs(size, device)
    read, written = bytes_moved(kernel, size)
    info = case_info(kernel, size, str(list(SHAPES[size])), implementation, device.name,
                     work=read + written, read=read, written=written, unit="B",
                     elements=inputs.n)
    return inputs, info


@pytest.mark.parametrize("implementation", list(FORWARD))
@pytest.mark.parametrize("size", SIZES)
def test_huber_forward(measure, device, size, implementation):
    inputs, info = _case("Huber forward", size, implementation, device)
    measure(lambda: FORWARD[implementation](inputs), info)


@pytest.mark.parametrize("implementation", list(FORWARD_GRADIENT))
@pytest.mark.parametrize("size", SIZES)
def test_huber_forward_gradient(measure, device, size, implementation):
    inputs, info = _case("Huber forward + gradient", size, implementation, device)
    measure(lambda: FORWARD_GRADIENT[implementation](inputs), info)


@pytest.mark.parametrize("implementation", list(METRIC_UPDATE))
@pytest.mark.parametrize("size", SIZES)
def test_huber_metric_update(measure, device, size, implementation):
    inputs, info = _case("HuberMetric update", size, implementation, device)
    measure(lambda: METRIC_UPDATE[implementation](inputs), info)


# --- roofs: how fast this machine reads (and writes) the large arrays --------------
_CORES = os.cpu_count() or 1
_WORKERS = concurrent.futures.ThreadPoolExecutor(_CORES, thread_name_prefix="bench-roof")


def _per_core(*arrays):
    """Each array's flat view cut into one contiguous slice per core, zipped by core."""
    return list(zip(*(np.array_split(array.reshape(-1), _CORES) for array in arrays)))


def _read_all_cores(inputs):
    """max over both inputs, one contiguous slice per core on a thread pool (NumPy releases
    the GIL in the reduction): a memory-bound read of every byte, the roof of a kernel
    that reads both inputs. Not a summing reduction (`tf.reduce_sum`): that is bound by
    its adds, below what memory delivers."""
    inputs.device.require_host()
    slices = [part for parts in _per_core(inputs.np_true, inputs.np_pred) for part in parts]

    def call():
        return max(_WORKERS.map(np.max, slices))
    return call, "numpy"


def _read_write_all_cores(inputs):
    """`np.add(y_true, y_pred, out=result)`, one slice per core on a thread pool: both
    inputs read and one input-sized array written, as forward + gradient does. The
    result is allocated and touched once, outside the timing (no page faults)."""
    inputs.device.require_host()
    result = np.ones_like(inputs.np_pred)
    slices = _per_core(inputs.np_true, inputs.np_pred, result)

    def call():
        list(_WORKERS.map(lambda parts: np.add(parts[0], parts[1], out=parts[2]), slices))
    return call, "numpy"


def _copy_all_cores(inputs):
    """`np.copyto(result, y_pred)`, one slice per core: one input read, one written. A large
    copy writes with non-temporal stores (glibc's memcpy), so it is not slowed by reading
    each output line first as `np.add(..., out=)` is: the two bound read + write together."""
    inputs.device.require_host()
    result = np.ones_like(inputs.np_pred)
    slices = _per_core(result, inputs.np_pred)

    def call():
        list(_WORKERS.map(lambda parts: np.copyto(parts[0], parts[1]), slices))
    return call, "numpy"


READ = f"numpy max ({_CORES} threads)"
READ_WRITE = f"numpy add, out= ({_CORES} threads)"
COPY = f"numpy copy ({_CORES} threads)"
# name -> (roof kind, builder, (arrays read, arrays written))
ROOFS = {READ: ("read", _read_all_cores, ARRAYS["Huber forward"]),
         READ_WRITE: ("read+write", _read_write_all_cores, ARRAYS["Huber forward + gradient"]),
         COPY: ("read+write", _copy_all_cores, (1, 1))}


@pytest.mark.parametrize("implementation", list(ROOFS))
def test_memory_roof(measure, device, implementation):
    inputs = Inputs("large", device)
    roof, make, (read, written) = ROOFS[implementation]
    array = inputs.np_true.nbytes
    info = ceiling_info("B", implementation, device.name, roof=roof,
                        work=(read + written) * array, read=read * array,
                        written=written * array, shape=str(list(SHAPES["large"])))
    measure(lambda: make(inputs), info)


# --- fastcustom against its peers, timed in turn ----------------------------------
# Per kernel: its implementations, and the peer of each role (`cases.PEERS`) that the
# headline compares fastcustom with; the roof timed in the same loop at the large size.
HEADLINE = {
    "Huber forward": (FORWARD, (READ,), {
        "notes": "notes (eager)", "keras": "keras built-in", "xla": "best XLA form (float32)",
        "torch": "torch", "jax": "jax + optax"}),
    "Huber forward + gradient": (FORWARD_GRADIENT, (READ_WRITE, COPY), {
        "notes": "notes (eager)", "keras": "keras built-in", "xla": "best XLA form (float32)",
        "torch": "torch", "jax": "jax + optax"}),
    "HuberMetric update": (METRIC_UPDATE, (READ,), {
        "notes": "notes (eager)", "keras": "keras built-in", "xla": "tf.function + XLA"}),
}
# The project's targets for fastcustom's rows: HuberLoss's forward at >= 85% of the roof.
TARGETS = {"Huber forward": {"roof": 0.85}}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kernel", list(HEADLINE))
def test_huber_interleaved(device, interleave, kernel, size):
    table, roof_names, peers = HEADLINE[kernel]
    inputs, info = _case(kernel, size, FASTCUSTOM, device)
    makers = {name: functools.partial(table[name], inputs)
              for name in (FASTCUSTOM, *peers.values())}
    roofs = []
    if size == "large" and device.name == "cpu":
        for name in roof_names:
            _, make_roof, (read, written) = ROOFS[name]
            roofs.append((name, functools.partial(make_roof, inputs),
                          (read + written) * inputs.np_true.nbytes))
    interleave(kernel, size, info["shape"], makers, peers, work=info["work"], unit="B",
               read=info["bytes_read"], written=info["bytes_written"], roofs=roofs,
               targets=TARGETS.get(kernel))

"""The private TensorFlow and Keras symbols the core uses: each guarded, each with a public
fallback.

The components, the kernels' dispatch and the op loader run on public APIs except
for the few answers below, which TensorFlow and Keras keep private. Each is imported
here, once, inside a guard: if a release moves it, the fallback (public, correct,
maybe slower) serves instead, and `missing()` names what moved. So a TensorFlow or
Keras release can slow the core down, never break `import fastcustom` or
`keras.models.load_model`. (The accelerated loop's private uses of Keras's trainer
live behind their own adapter, `fastcustom/training/keras_internals.py`, imported
only when a loop runs.) `tests/test_private_symbols.py` checks every one is found in
the TensorFlow and Keras CI runs.

- `in_xla_context()`: whether the graph being built will be compiled by XLA
  (`control_flow_util.GraphOrParentsInXlaContext`). Fallback: any graph may be, so
  graphs get TF ops, which run everywhere (the fused op only eagerly).
- `should_record(tensors)`, `unrecorded(fn, *tensors)`, `record_gradient(...)`: whether a
  `tf.GradientTape` watches tensors, running without recording, and recording a
  computed gradient by hand (`tensorflow.python.eager.record`). Fallbacks: always
  "watched" (a forward pass also writes its gradient), `tf.stop_gradient` on the
  inputs, and `tf.custom_gradient`.
- `registered_kernel_dtypes(op_name, device_type)`: the dtypes an op has kernels for
  (`tensorflow.python.framework.kernels`). Fallback: None (unknown).
- `profiler_capturing()`: whether the TensorFlow profiler is recording now
  (`tensorflow.python.profiler.trace.enabled`). Fallback: False (no step markers).
- `keras_mask(tensor)`: the Keras mask a layer attached to a tensor
  (`keras.src.backend.get_keras_mask`). Fallback: the `_keras_mask` attribute, which is
  how Keras 3's TensorFlow backend stores it.
"""

import contextlib

import tensorflow as tf

_MISSING = []


def _private(import_it, name):
    """`import_it()`, or None (and `name` noted as missing) when this release moved it."""
    try:
        return import_it()
    except (ImportError, AttributeError):
        _MISSING.append(name)
        return None


def _graph_or_parents_in_xla_context():
    from tensorflow.python.ops import control_flow_util
    return control_flow_util.GraphOrParentsInXlaContext


def _record_module():
    from tensorflow.python.eager import record
    for name in ("should_record_backprop", "stop_recording", "record_operation"):
        getattr(record, name)
    return record


def _get_registered_kernels_for_op():
    from tensorflow.python.framework import kernels
    return kernels.get_registered_kernels_for_op


def _trace_module():
    from tensorflow.python.profiler import trace
    trace.enabled   # a function in TensorFlow 2.21, a module flag before
    return trace


def _get_keras_mask():
    from keras.src.backend import get_keras_mask
    return get_keras_mask


_in_xla = _private(_graph_or_parents_in_xla_context,
                   "tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext")
_record = _private(_record_module, "tensorflow.python.eager.record")
_kernels_for_op = _private(_get_registered_kernels_for_op,
                           "tensorflow.python.framework.kernels.get_registered_kernels_for_op")
_keras_mask = _private(_get_keras_mask, "keras.src.backend.get_keras_mask")
_trace = _private(_trace_module, "tensorflow.python.profiler.trace.enabled")

# What each guarded import above reaches, for the test that checks they all exist.
PRIVATE_SYMBOLS = (
    "tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext",
    "tensorflow.python.eager.record",
    "tensorflow.python.framework.kernels.get_registered_kernels_for_op",
    "keras.src.backend.get_keras_mask",
    "tensorflow.python.profiler.trace.enabled",
)


def missing():
    """The private symbols this TensorFlow / Keras lacks (their fallbacks serve)."""
    return list(_MISSING)


def in_xla_context():
    """True inside a `jit_compile=True` function (or a graph nested in one): custom ops
    cannot run there ("Detected unsupported operations")."""
    if _in_xla is not None:
        return _in_xla(tf.compat.v1.get_default_graph())
    return not tf.executing_eagerly()


def should_record(tensors):
    """Whether a `tf.GradientTape` (or a `tf.function` being traced under one) records an
    op on `tensors`."""
    if _record is not None:
        return _record.should_record_backprop(tensors)
    return True


def unrecorded(fn, *tensors):
    """`fn(*tensors)`, invisible to every tape."""
    if _record is not None:
        with _record.stop_recording():
            return fn(*tensors)
    return fn(*[tf.stop_gradient(t) for t in tensors])


def record_gradient(name, output, inputs, backward):
    """`output` (computed unrecorded from `inputs`) recorded on the tapes as a function of
    `inputs` whose gradient is `backward(upstream)` (one per input); returns the tensor
    the caller must use from now on."""
    if _record is not None:
        _record.record_operation(name, [output], list(inputs), backward)
        return output

    @tf.custom_gradient
    def recorded(*_inputs):
        return tf.identity(output), lambda upstream: backward(upstream)

    return recorded(*inputs)


def registered_kernel_dtypes(op_name, device_type):
    """The dtype names the kernels of `op_name` on `device_type` take, sorted; None when
    this TensorFlow does not say."""
    if _kernels_for_op is None:
        return None
    registered = _kernels_for_op(op_name).kernel
    return sorted({tf.dtypes.as_dtype(t).name for k in registered if k.device_type == device_type
                   for c in k.constraint for t in c.allowed_values.list.type})


def profiler_capturing():
    """Whether the TensorFlow profiler is recording (a trace started and not stopped)."""
    if _trace is None:
        return False
    enabled = _trace.enabled
    return bool(enabled() if callable(enabled) else enabled)


def keras_mask(tensor):
    """The Keras mask attached to `tensor` by a masking layer, or None."""
    if _keras_mask is not None:
        return _keras_mask(tensor)
    return getattr(tensor, "_keras_mask", None)


@contextlib.contextmanager
def without(*names):
    """For tests: the fallbacks of `names` (keys: "xla", "record", "kernels", "keras_mask")
    serve inside the block, as on a release that moved those symbols."""
    global _in_xla, _record, _kernels_for_op, _keras_mask
    saved = _in_xla, _record, _kernels_for_op, _keras_mask
    fields = {"xla": "_in_xla", "record": "_record", "kernels": "_kernels_for_op",
              "keras_mask": "_keras_mask"}
    unknown = set(names) - set(fields)
    if unknown:
        raise ValueError(f"unknown private symbols {sorted(unknown)}; known: {sorted(fields)}")
    try:
        for name in names:
            globals()[fields[name]] = None
        yield
    finally:
        _in_xla, _record, _kernels_for_op, _keras_mask = saved

"""Keras's errors for bad data, kept under XLA.

TensorFlow's CPU and GPU kernels check what indexes: a gather's indices
("indices[5,1] = 12 is not in [0, 10)", an `Embedding` given index 12 of 10) and a
sparse softmax cross-entropy's labels ("Received a label value of 3 which is outside
the valid range of [0, 3)"). XLA does not: a gather clamps its indices and the loss
is NaN, so an XLA-compiled step trains on silently. `with_checks(step)` wraps a
model's step so that, traced, it also returns a `report` of those checks, computed
from the step's own ops: every gather (`GatherV2`, `ResourceGather`, `GatherNd`,
`ResourceGatherNd`) and `SparseSoftmaxCrossEntropyWithLogits` among the ops the step
adds to its graph. The compiled loop stops at the first step whose report is bad, and
`raise_if_bad` raises TensorFlow's own error type with its message (the step's update
has been applied: TensorFlow's kernel raises inside the step, before it). A step with
none of these ops reports a constant, which XLA folds away.

A report is an int64 vector: [kind, value, bound, rank, index_0 .. index_7] (kind 0:
nothing wrong), for the first failing check of the step.
"""

import tensorflow as tf

NONE, GATHER, GATHER_ND, LABELS = 0, 1, 2, 3
MAX_RANK = 8
REPORT_SIZE = 4 + MAX_RANK
_GATHERS = {"GatherV2": GATHER, "ResourceGather": GATHER, "GatherNd": GATHER_ND,
            "ResourceGatherNd": GATHER_ND}


def ok_report():
    """The report of a step where nothing is wrong."""
    return tf.zeros([REPORT_SIZE], tf.int64)


def _bounds(op):
    """(kind, indices, bound): what an op's indices must stay below, or None."""
    kind = _GATHERS.get(op.type)
    if kind is not None and op.inputs[1].shape.rank is not None \
            and op.inputs[1].shape.rank <= MAX_RANK:
        params, indices = op.inputs[0], op.inputs[1]
        shape = tf.raw_ops.VariableShape(input=params, out_type=tf.int64) \
            if op.type.startswith("Resource") else tf.shape(params, out_type=tf.int64)
        if kind == GATHER:
            axis = tf.cast(op.inputs[2], tf.int64) if op.type == "GatherV2" else 0
            axis = tf.where(axis < 0, axis + tf.size(shape, out_type=tf.int64), axis)
            return kind, indices, tf.gather(shape, axis)
        depth = indices.shape[-1]
        if depth is None:
            return None
        return kind, indices, shape[:depth]
    if op.type == "SparseSoftmaxCrossEntropyWithLogits" and op.inputs[1].shape.rank is not None:
        return LABELS, op.inputs[1], tf.shape(op.inputs[0], out_type=tf.int64)[-1]
    return None


def _unravel(position, shape, rank):
    """The index of flat `position` in `shape` (of static `rank`), as XLA can compile it
    (tf.unravel_index has no XLA kernel); empty axes count as 1."""
    index, rest = [], position
    for axis in reversed(range(rank)):
        size = tf.maximum(shape[axis], 1)
        index.append(rest % size)
        rest = rest // size
    return tf.stack(index[::-1]) if index else tf.zeros([0], tf.int64)


def _report(kind, indices, bound):
    """(bad, report) of one check: the first index outside [0, bound)."""
    indices = tf.cast(indices, tf.int64)
    bad = (indices < 0) | (indices >= bound)
    if kind == GATHER_ND:           # one position per index vector
        bad = tf.reduce_any(bad, axis=-1)
    flat = tf.reshape(bad, [-1])
    position = tf.argmax(tf.concat([tf.cast(flat, tf.int32), [1]], 0), output_type=tf.int64)
    rank = bad.shape.rank
    where = _unravel(tf.minimum(position, tf.maximum(tf.size(flat, out_type=tf.int64) - 1, 0)),
                     tf.shape(bad, out_type=tf.int64), rank)
    if kind == GATHER_ND:
        vectors = tf.reshape(indices, [-1, indices.shape[-1]])
        vector = tf.gather(tf.concat([vectors, tf.zeros_like(vectors[:1])], 0), position)
        outside = (vector < 0) | (vector >= bound)
        component = tf.argmax(tf.cast(outside, tf.int32), output_type=tf.int64)
        value, limit = tf.gather(vector, component), tf.gather(bound, component)
    else:
        value = tf.gather(tf.concat([tf.reshape(indices, [-1]), [0]], 0), position)
        limit = bound
    index = tf.pad(tf.reshape(tf.cast(where, tf.int64), [rank]), [[0, MAX_RANK - rank]])
    report = tf.stack([tf.constant(kind, tf.int64), value, tf.cast(limit, tf.int64),
                       tf.constant(rank, tf.int64)])
    return tf.reduce_any(flat), tf.concat([report, index], 0)


def step_report(ops):
    """The report of the ops a step added to its graph (the first failing check)."""
    report = ok_report()
    checks = [c for c in (_bounds(op) for op in ops) if c is not None]
    for kind, indices, bound in reversed(checks):   # the first check in op order wins
        bad, this = _report(kind, indices, bound)
        report = tf.where(bad, this, report)
    return report


def with_checks(step):
    """`step(data)` -> (its outputs, the report of the gathers and labels it computed)."""
    def checked(data):
        graph = tf.compat.v1.get_default_graph()
        first = len(graph.get_operations())
        outputs = step(data)
        return outputs, step_report(graph.get_operations()[first:])

    checked.__name__ = f"checked_{getattr(step, '__name__', 'step')}"
    return checked


def message(report):
    """TensorFlow's kernel message for a bad report (a NumPy int64 vector)."""
    kind, value, bound, rank = (int(v) for v in report[:4])
    where = ",".join(str(int(i)) for i in report[4:4 + rank])
    if kind == LABELS:
        return (f"Received a label value of {value} which is outside the valid range of "
                f"[0, {bound}).")
    if kind == GATHER_ND:
        return f"indices[{where}] has a component {value} that is not in [0, {bound})"
    return f"indices[{where}] = {value} is not in [0, {bound})"


def raise_if_bad(report, what):
    """Raise `tf.errors.InvalidArgumentError` when `report` says a check failed; `what`
    says where (e.g. "step 12 of epoch 1")."""
    report = report.numpy() if hasattr(report, "numpy") else report
    if int(report[0]) != NONE:
        raise tf.errors.InvalidArgumentError(
            None, None, f"{message(report)} (in {what}; XLA does not check indices, "
            "fastcustom does)")

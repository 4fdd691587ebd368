"""Keras's errors for bad data, kept under XLA.

TensorFlow's CPU and GPU kernels check what indexes: a gather's indices
("indices[5,1] = 12 is not in [0, 10)", an `Embedding` given index 12 of 10) and a
sparse softmax cross-entropy's labels ("Received a label value of 3 which is outside
the valid range of [0, 3)"). XLA does not: a gather clamps its indices and the loss
is NaN, so an XLA-compiled step trains on silently. Two safeguards, both read off the
step's own ops, every gather (`GatherV2`, `ResourceGather`, `GatherNd`,
`ResourceGatherNd`) and `SparseSoftmaxCrossEntropyWithLogits` the step adds to its
graph:

- `with_checks(step)` makes the traced step also return a `report` of those checks
  (int64 [kind, value, bound, rank, index_0 .. index_7]; kind 0: nothing wrong); the
  compiled loop stops after the first step whose report is bad and `raise_if_bad`
  raises TensorFlow's own error type with its message. A step with none of these ops
  reports a constant, which XLA folds away.
- `Precheck.of(trace)`: when the indices and labels checked are functions of the batch
  alone (an `Embedding` on an input, labels in `y`: the usual case), the checks copied
  out of the step's graph, to run on data before any step: the loop finds the first
  failing step of a call beforehand and runs only the steps before it, so the model
  keeps exactly the state Keras leaves when its kernel raises; arrays are checked once
  per fit, a stream's window once per call.
"""

import numpy as np
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
        shape = _shape(params, variable=op.type.startswith("Resource"))
        if kind == GATHER:
            static_axis = tf.get_static_value(op.inputs[2]) if op.type == "GatherV2" else 0
            if static_axis is not None and not op.type.startswith("Resource") \
                    and params.shape.rank is not None \
                    and params.shape[int(static_axis)] is not None:
                # the bound known while tracing: a check of constant indices reads no data
                return kind, indices, tf.constant(params.shape[int(static_axis)], tf.int64)
            axis = tf.cast(op.inputs[2], tf.int64) if op.type == "GatherV2" else 0
            axis = tf.where(axis < 0, axis + tf.size(shape, out_type=tf.int64), axis)
            return kind, indices, tf.gather(shape, axis)
        depth = indices.shape[-1]
        if depth is None:
            return None
        return kind, indices, shape[:depth]
    if op.type == "SparseSoftmaxCrossEntropyWithLogits" and op.inputs[1].shape.rank is not None:
        classes = op.inputs[0].shape[-1]
        bound = tf.constant(classes, tf.int64) if classes is not None \
            else _shape(op.inputs[0])[-1]
        return LABELS, op.inputs[1], bound
    return None


def _shape(tensor, variable=False):
    """`tensor`'s shape as int64: a constant when known while tracing (so that a check
    reads no variable), else read when the step runs."""
    if not variable and tensor.shape.is_fully_defined():
        return tf.constant(tensor.shape.as_list(), tf.int64)
    if variable:
        return tf.raw_ops.VariableShape(input=tensor, out_type=tf.int64)
    return tf.shape(tensor, out_type=tf.int64)


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
    """The report of the ops a step added to its graph (the first failing check), and
    the checks themselves named in the graph (`Precheck` copies them out)."""
    report = ok_report()
    checks = [c for c in (_bounds(op) for op in ops) if c is not None]
    for number, (kind, indices, bound) in enumerate(checks):
        tf.identity(indices, name=f"{_CHECK}_{number}_{kind}_indices")
        tf.identity(bound, name=f"{_CHECK}_{number}_{kind}_bound")
    for kind, indices, bound in reversed(checks):   # the first check in op order wins
        bad, this = _report(kind, indices, bound)
        report = tf.where(bad, this, report)
    return report


_CHECK = "fastcustom_check"


def with_checks(step):
    """`step(data)` -> (its outputs, the report of the gathers and labels it computed)."""
    def checked(data):
        graph = tf.compat.v1.get_default_graph()
        first = len(graph.get_operations())
        outputs = step(data)
        return outputs, step_report(graph.get_operations()[first:])

    checked.__name__ = f"checked_{getattr(step, '__name__', 'step')}"
    return checked


def _row_flags(kind, indices, bound, rows):
    """Per batch row, whether a check fails there: [rows] bool. Indices whose leading
    axis is not the batch's count for every row."""
    indices = tf.cast(indices, tf.int64)
    bad = (indices < 0) | (indices >= bound)
    if kind == GATHER_ND:
        bad = tf.reduce_any(bad, axis=-1)
    if bad.shape.rank == 0:
        return tf.fill([rows], bad)
    per_row = tf.reduce_any(bad, axis=list(range(1, bad.shape.rank))) \
        if bad.shape.rank > 1 else bad
    return tf.cond(tf.equal(tf.shape(per_row)[0], rows), lambda: per_row,
                   lambda: tf.fill([rows], tf.reduce_any(bad)))


class Precheck:
    """A step's checks as a function of its batch alone, to run on data before the step:
    copied out of the step's traced graph (the ops the checked indices and bounds are
    computed from, when they read nothing but the batch) and imported where the data
    are (`tf.graph_util.import_graph_def`). `of(trace)` is None when a check reads the
    model's state (an index computed by a layer), or when the step has no checks.
    """

    def __init__(self, graph_def, inputs, checks):
        self.graph_def, self.inputs, self.checks = graph_def, inputs, checks
        # The same, as graph functions to call eagerly on data of any number of rows.
        self.report_of = tf.function(self.report, autograph=False, reduce_retracing=True)
        self.row_flags_of = tf.function(self.row_flags, autograph=False,
                                        reduce_retracing=True)

    @classmethod
    def of(cls, concrete):
        """The precheck of a traced `with_checks` step, or None. A check whose indices
        and bound read nothing but constants (a reduction's axes) is decided here, once:
        one that passes is left out, so that a step with only such checks has no precheck."""
        graph = concrete.graph
        names = sorted({op.name.rsplit("_", 1)[0] for op in graph.get_operations()
                        if op.name.startswith(_CHECK + "_")})
        batch_inputs = len(tf.nest.flatten(concrete.structured_input_signature,
                                           expand_composites=True))
        position = {t.op.name: i for i, t in enumerate(graph.inputs[:batch_inputs])}
        nodes = {node.name: node for node in graph.as_graph_def().node}
        copies = {}
        for name in names:
            copies[name] = _copy(graph, name, position, nodes)
            if copies[name] is None:
                return None
        constant = [name for name in names if not copies[name][1]]
        if constant and cls._of(graph, copies, constant).passes_whatever_the_batch():
            names = [name for name in names if name not in constant]
        return cls._of(graph, copies, names) if names else None

    @classmethod
    def _of(cls, graph, copies, names):
        """The precheck of the checks `names`, from their `copies` ({name: (nodes, inputs)})."""
        kept, inputs = {}, {}
        for name in names:
            kept.update(copies[name][0])
            inputs.update(copies[name][1])
        graph_def = tf.compat.v1.GraphDef(node=list(kept.values()))
        graph_def.versions.CopyFrom(graph.graph_def_versions)
        return cls(graph_def, inputs, [(name, int(name.rsplit("_", 1)[1])) for name in names])

    def _checks(self, batch):
        """[(kind, indices, bound)] of `batch`, computed where it is."""
        flat = tf.nest.flatten(batch, expand_composites=True)
        names = [f"{name}_{part}:0" for name, _ in self.checks for part in ("indices", "bound")]
        tensors = tf.graph_util.import_graph_def(
            self.graph_def, input_map={name: flat[i] for name, i in self.inputs.items()},
            return_elements=names, name="fastcustom_precheck")
        return [(kind, tensors[2 * n], tensors[2 * n + 1])
                for n, (_, kind) in enumerate(self.checks)]

    def report(self, batch):
        """The report of `batch` (the step's argument), as the step would make it."""
        report = ok_report()
        for kind, indices, bound in reversed(self._checks(batch)):
            bad, this = _report(kind, indices, bound)
            report = tf.where(bad, this, report)
        return report

    def passes_whatever_the_batch(self):
        """Whether checks that read no batch pass (run once, in a graph of their own)."""
        with tf.Graph().as_default() as graph:
            report = self.report(())
            with tf.compat.v1.Session(graph=graph) as session:
                return int(session.run(report)[0]) == NONE

    def row_flags(self, batch):
        """Per row of `batch` (of any number of rows), whether a check fails there."""
        rows = tf.shape(tf.nest.flatten(batch, expand_composites=True)[0])[0]
        flags = tf.zeros([rows], tf.bool)
        for kind, indices, bound in self._checks(batch):
            flags |= _row_flags(kind, indices, bound, rows)
        return flags


def _copy(graph, name, position, nodes):
    """The nodes that compute the check `name`'s indices and bound ({node name: NodeDef},
    a shape known while tracing made a constant) and the batch tensors they read ({graph
    tensor name: position in the batch}); None when they read the model's state."""
    kept, inputs = {}, {}
    stack = [graph.get_operation_by_name(f"{name}_{part}") for part in ("indices", "bound")]
    while stack:
        op = stack.pop()
        if op.name in kept:
            continue
        static = _static_value(op)
        if static is not None:
            kept[op.name] = tf.compat.v1.NodeDef(
                name=op.name, op="Const",
                attr={"dtype": tf.compat.v1.AttrValue(type=op.outputs[0].dtype.as_datatype_enum),
                      "value": tf.compat.v1.AttrValue(tensor=tf.make_tensor_proto(static))})
            continue
        if op.op_def.is_stateful or any(t.dtype == tf.resource for t in op.outputs):
            return None
        if op.type == "Placeholder":   # the batch: mapped where imported, not copied
            if op.name not in position:
                return None
            inputs[op.outputs[0].name] = position[op.name]
            continue
        kept[op.name] = nodes[op.name]
        stack.extend(t.op for t in op.inputs)    # data inputs only
    return kept, inputs


def _static_value(op):
    """The value of a Shape / Size / Rank op whose input's shape is known, else None."""
    if op.type not in ("Shape", "Size", "Rank") or not op.inputs[0].shape.is_fully_defined():
        return None
    shape = op.inputs[0].shape
    value = {"Shape": shape.as_list(), "Size": shape.num_elements(), "Rank": shape.rank}[op.type]
    return np.array(value, op.outputs[0].dtype.as_numpy_dtype)


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

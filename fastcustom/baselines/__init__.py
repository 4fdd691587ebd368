"""The notes' own TensorFlow code, kept as the baseline the benchmarks and tests compare against.

`notes.py` holds the notes' components as written there (`Huberloss`, `HuberMetric`,
`MyDense`, ...); `training_loop.py` the notes' eager custom training loop. They import
TensorFlow; the NumPy truth every component is checked against is `fastcustom.reference`.
"""

"""Training past one machine: `tf.distribute.MultiWorkerMirroredStrategy` with fastcustom.

`launch.py` starts, watches and restarts the worker processes of a job on one
machine (standard library only: `fastcustom launch`); `callbacks.py` makes a
multi-worker `fit`'s callbacks write from the chief only, with backups a killed
worker cannot leave half-written.
"""

"""fastcustom runs on Keras's TensorFlow backend: under another backend, `import fastcustom`
stays lazy and cheap, and the first use of a component or of the loop raises one clear error
naming the backend and how to select TensorFlow."""

import json

import pytest

pytest.importorskip("jax", reason="the check runs Keras on its JAX backend")

UNDER_JAX = """
import json, sys
import keras
import fastcustom
report = {"backend": keras.backend.backend(),
          "loaded": sorted(m for m in sys.modules if m.startswith("fastcustom.")),
          "reference": float(fastcustom.reference.huber([[0.0]], [[3.0]], 1.0)[0])}
for name in ("HuberLoss", "MyDense", "accelerate"):
    try:
        getattr(fastcustom, name)
        report[name] = "no error"
    except RuntimeError as error:
        report[name] = str(error)
print(json.dumps(report))
"""


def test_another_keras_backend_gets_one_clear_error_at_first_use(run_python):
    result = run_python("-c", UNDER_JAX, env={"KERAS_BACKEND": "jax"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax"
    assert report["reference"] == 2.5      # NumPy only: works under any backend
    assert not [m for m in report["loaded"] if m.split(".")[1] in ("losses", "ops", "training")]
    for name in ("HuberLoss", "MyDense", "accelerate"):
        assert "Keras is using 'jax'" in report[name], report
        assert "KERAS_BACKEND=tensorflow" in report[name]

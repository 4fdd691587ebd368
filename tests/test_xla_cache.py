"""The persistent XLA cache on request: a fresh process reuses a loop another compiled; off
unless asked. (The fits compile with XLA from their first call: a fit this short under
"auto" stays a graph and compiles nothing.)"""

import os

import pytest

FIT = """
import numpy as np, keras, fastcustom
x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
fastcustom.accelerate(model, jit_compile=True).fit(x, x[:, :1], epochs=1, verbose=0)
import os; print("TF_XLA_FLAGS=" + os.environ.get("TF_XLA_FLAGS", ""))
"""


@pytest.fixture
def run_fit(run_python):
    """FIT in a fresh process with `env` added; its last line (TF_XLA_FLAGS=...)."""
    def run(env):
        result = run_python("-c", FIT, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout.strip().splitlines()[-1]
    return run


def test_a_fit_fills_the_cache_folder_and_it_is_off_unless_asked(tmp_path, run_fit):
    folder = tmp_path / "xla"
    flags = run_fit({"FASTCUSTOM_XLA_CACHE": str(folder), "TF_XLA_FLAGS": ""})
    assert flags == f"TF_XLA_FLAGS=--tf_xla_persistent_cache_directory={folder}"
    cached = sorted(os.listdir(folder))
    assert cached and all(name.endswith(".pb") for name in cached)
    run_fit({"FASTCUSTOM_XLA_CACHE": str(folder), "TF_XLA_FLAGS": ""})
    assert sorted(os.listdir(folder)) == cached   # the second process compiled nothing new
    assert run_fit({"FASTCUSTOM_XLA_CACHE": "0", "TF_XLA_FLAGS": ""}) == "TF_XLA_FLAGS="
    assert run_fit({"FASTCUSTOM_XLA_CACHE": "", "TF_XLA_FLAGS": ""}) == "TF_XLA_FLAGS="


@pytest.mark.parametrize("theirs", ["--tf_xla_persistent_cache_directory={}"])
def test_the_users_own_cache_flag_is_kept(tmp_path, theirs, run_fit):
    flag = theirs.format(tmp_path / "mine")
    assert run_fit({"FASTCUSTOM_XLA_CACHE": str(tmp_path / "ours"), "TF_XLA_FLAGS": flag}) == \
        f"TF_XLA_FLAGS={flag}"
    assert os.listdir(tmp_path / "mine") and not (tmp_path / "ours").exists()

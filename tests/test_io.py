"""mg.save / mg.load and Module.load_state_dict: round trips, atomic writes, and refusing bad checkpoints."""
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import minigrad as mg
from minigrad import nn


def make_model(seed=0, hidden=4, dtype=np.float32):
    mg.seed(seed)
    return nn.Sequential(nn.Linear(3, hidden, dtype=dtype), nn.Tanh(), nn.Linear(hidden, 2, dtype=dtype))


def snapshot(model):
    return {n: (p.data.copy(), p.data.dtype) for n, p in model.named_parameters()}


def assert_unchanged(model, snap):
    now = snapshot(model)
    assert list(now) == list(snap)
    for name, (arr, dtype) in snap.items():
        assert now[name][1] == dtype
        np.testing.assert_array_equal(now[name][0], arr, err_msg=name)


# ------------------------------------------------------------------ round trips

def test_module_round_trip(tmp_path):
    model = make_model(0)
    path = tmp_path / "model.npz"
    mg.save(model, path)
    other = make_model(1)
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    assert not np.allclose(other(x).data, model(x).data)
    other.load_state_dict(mg.load(path))
    np.testing.assert_array_equal(other(x).data, model(x).data)
    assert_unchanged(other, snapshot(model))


def test_dict_round_trip_keeps_values_dtypes_and_names(tmp_path):
    state = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1.5, -2.0]),
             "steps": np.array(7, dtype=np.int64), "file": mg.Tensor(np.ones(2, np.float32)),
             "allow_pickle": np.zeros((0, 3))}
    path = str(tmp_path / "ckpt")              # used exactly as given: no suffix added
    mg.save(state, path)
    assert os.listdir(tmp_path) == ["ckpt"]
    loaded = mg.load(path)
    assert list(loaded) == list(state)
    for name, value in state.items():
        expected = value.data if isinstance(value, mg.Tensor) else value
        assert loaded[name].dtype == expected.dtype and loaded[name].shape == expected.shape
        np.testing.assert_array_equal(loaded[name], expected)


def test_save_rejects_what_needs_pickle(tmp_path):
    with pytest.raises(TypeError, match="'bad' is an object array"):
        mg.save({"bad": np.array([{"x": 1}], dtype=object)}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="expected a Module or a dict"):
        mg.save([np.zeros(2)], tmp_path / "x.npz")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ atomic writes

def test_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = make_model(0)
    mg.save(old, path)
    old_bytes = path.read_bytes()

    calls = []
    real_write = np.lib.format.write_array

    def failing_write(fp, array, *args, **kwargs):
        calls.append(array.shape)
        if len(calls) == 2:                        # after the first array is already in the archive
            raise OSError("disk full (simulated)")
        return real_write(fp, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing_write)
    with pytest.raises(OSError, match="disk full"):
        mg.save(make_model(1), path)
    assert len(calls) == 2
    assert os.listdir(tmp_path) == ["model.npz"]   # no temporary file left behind
    assert path.read_bytes() == old_bytes
    fresh = make_model(2)
    fresh.load_state_dict(mg.load(path))
    assert_unchanged(fresh, snapshot(old))


def test_process_killed_mid_write_never_truncates_the_target(tmp_path):
    path = tmp_path / "model.npz"
    mg.save({"w": np.arange(4.0)}, path)
    old_bytes = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, numpy as np, minigrad as mg
        real = np.lib.format.write_array
        def write_then_die(fp, array, *a, **k):
            real(fp, array, *a, **k)
            os._exit(3)                     # the process dies with the archive half written
        np.lib.format.write_array = write_then_die
        mg.save({{"w": np.zeros(4), "v": np.ones(1000)}}, {str(path)!r})
    """)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert path.read_bytes() == old_bytes
    np.testing.assert_array_equal(mg.load(path)["w"], np.arange(4.0))
    leftovers = [f for f in os.listdir(tmp_path) if f != "model.npz"]
    assert all(f.startswith(".model.npz.") and f.endswith(".tmp") for f in leftovers)   # hidden, never the target


# ------------------------------------------------------------------ refusing bad files

def test_load_missing_file(tmp_path):
    with pytest.raises(mg.CheckpointError, match="checkpoint file not found: .*nothing.npz"):
        mg.load(tmp_path / "nothing.npz")


def test_load_truncated_file(tmp_path):
    path = tmp_path / "model.npz"
    mg.save(make_model(0), path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100, 3):
        path.write_bytes(data[:cut])
        with pytest.raises(mg.CheckpointError, match="model.npz"):
            mg.load(path)


def test_load_corrupted_bytes_fails_the_crc(tmp_path):
    path = tmp_path / "model.npz"
    mg.save({"w": np.zeros(1000)}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                   # inside the array's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(mg.CheckpointError, match="truncated or corrupt"):
        mg.load(path)


def test_load_refuses_object_arrays_and_pickles(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, w=np.zeros(2), payload=np.array([{"code": "anything"}], dtype=object))
    with pytest.raises(mg.CheckpointError, match="evil.npz.*object arrays"):
        mg.load(path)
    pickled = tmp_path / "evil.pkl"
    pickled.write_bytes(pickle.dumps({"w": np.zeros(2)}))
    with pytest.raises(mg.CheckpointError, match="evil.pkl.*not a readable .npz"):
        mg.load(pickled)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(mg.CheckpointError, match="single array, not an .npz"):
        mg.load(single)
    assert issubclass(mg.CheckpointError, ValueError)


def test_load_of_a_non_zip_is_clear(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    with pytest.raises(mg.CheckpointError, match="garbage.npz"):
        mg.load(path)
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    assert mg.load(tmp_path / "empty.npz") == {}


# ------------------------------------------------------------------ load_state_dict checks everything first

def bad_states():
    good = make_model(5).state_dict()
    wrong_shape = {**good, "0.weight": np.zeros((3, 5), np.float32)}
    wrong_dtype = {**good, "2.bias": np.zeros(2, np.float64)}
    missing = {k: v for k, v in good.items() if k != "2.bias"}
    unexpected = {**good, "3.weight": np.zeros((2, 2), np.float32)}
    return [
        (wrong_shape, r"'0.weight': shape \(3, 5\) in the state, \(3, 4\) in the model"),
        (wrong_dtype, "'2.bias': dtype float64 in the state, float32 in the model"),
        (missing, r"missing keys \(in the model, not in the state\): \['2.bias'\]"),
        (unexpected, r"unexpected keys \(in the state, not in the model\): \['3.weight'\]"),
    ]


@pytest.mark.parametrize("case", range(4))
def test_load_state_dict_mismatch_is_an_error_and_changes_nothing(case, tmp_path):
    state, message = bad_states()[case]
    model = make_model(0)
    snap = snapshot(model)
    with pytest.raises(mg.CheckpointError, match=message):
        model.load_state_dict(state)
    assert_unchanged(model, snap)
    # the same through a file
    mg.save(state, tmp_path / "bad.npz")
    with pytest.raises(mg.CheckpointError, match="nothing was loaded"):
        model.load_state_dict(mg.load(tmp_path / "bad.npz"))
    assert_unchanged(model, snap)


def test_load_state_dict_lists_every_problem_at_once():
    model = make_model(0)
    good = make_model(1).state_dict()
    state = {**good, "0.weight": np.zeros((9, 9), np.float32), "0.bias": np.zeros(4, np.float16), "extra": np.ones(1)}
    del state["2.weight"]
    with pytest.raises(mg.CheckpointError) as info:
        model.load_state_dict(state)
    text = str(info.value)
    for part in ("'0.weight': shape (9, 9)", "'0.bias': dtype float16", "['2.weight']", "['extra']"):
        assert part in text


def test_strict_false_reports_missing_and_unexpected_and_loads_the_rest():
    model = make_model(0)
    source = make_model(1).state_dict()
    state = {"0.weight": source["0.weight"], "0.bias": source["0.bias"], "head.extra": np.ones(3, np.float32)}
    snap = snapshot(model)
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == ["2.weight", "2.bias"]
    assert result.unexpected_keys == ["head.extra"]
    assert isinstance(result, nn.IncompatibleKeys)
    np.testing.assert_array_equal(model[0].weight.data, source["0.weight"])
    np.testing.assert_array_equal(model[2].weight.data, snap["2.weight"][0])
    # shapes are still checked with strict=False
    with pytest.raises(mg.CheckpointError, match="shape"):
        model.load_state_dict({"0.weight": np.zeros((1, 1), np.float32)}, strict=False)


def test_load_state_dict_copies_and_bumps_versions():
    model = make_model(0)
    state = make_model(1).state_dict()
    x = mg.Tensor(np.ones((1, 3), np.float32))
    out = model(x).sum()                  # records a graph that saved the old weights
    model.load_state_dict(state)
    state["0.weight"][:] = 0              # the model does not alias the state it was given
    assert np.any(model[0].weight.data != 0)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.backward()

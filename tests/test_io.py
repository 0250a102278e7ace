"""mg.save / mg.load and Module.load_state_dict: round trips, atomic writes, and refusing bad checkpoints."""
import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import time
import tracemalloc
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
    with pytest.raises(mg.CheckpointError, match="evil.pkl.*is a pickle file.*never unpickles"):
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


# ------------------------------------------------------------------ killed saves, modes, links, names

KILLED_SAVE = """
import sys, numpy as np, minigrad as mg
mg.save({"big": np.ones(int(sys.argv[2]) // 8)}, sys.argv[1])
"""


def test_saves_killed_with_sigkill_leave_the_old_file_and_the_next_save_cleans_up(tmp_path):
    path = tmp_path / "model.npz"
    mg.save({"w": np.arange(4.0)}, path)
    old_bytes = path.read_bytes()
    (tmp_path / "other.npz").write_bytes(b"x")
    (tmp_path / ".other.npz.0123abcd.tmp").write_bytes(b"x")      # another target's: not ours to remove
    (tmp_path / ".model.npz.k_3x9q2z.tmp").write_bytes(b"x")     # left by an earlier version's mkstemp
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    killed = 0
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path), str(160 << 20)], env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            temps = [f for f in tmp_path.iterdir() if f.name.startswith(".model.npz.")]
            if temps and temps[0].stat().st_size > (1 << 20):         # mid-write: kill it there
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        child.wait(timeout=60)
        killed += child.returncode == -signal.SIGKILL
        assert path.read_bytes() == old_bytes        # the old checkpoint is intact
        leftovers = [f.name for f in tmp_path.iterdir() if f.name.startswith(".model.npz.")]
        assert len(leftovers) <= 1                 # each save removed what the one killed before it left
    assert killed >= 1 and len(leftovers) == 1    # at least one save was killed mid-write
    mg.save({"w": np.arange(3.0)}, path)
    assert sorted(os.listdir(tmp_path)) == [".other.npz.0123abcd.tmp", "model.npz", "other.npz"]
    np.testing.assert_array_equal(mg.load(path)["w"], np.arange(3.0))


@pytest.fixture
def umask():
    def set_umask(mask):
        os.umask(mask)
    old = os.umask(0o022)
    yield set_umask
    os.umask(old)


def test_new_files_get_the_mode_open_gives_them_and_replaced_files_keep_theirs(tmp_path, umask):
    path = tmp_path / "model.npz"
    mg.save({"w": np.zeros(2)}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    umask(0o077)
    mg.save({"w": np.ones(2)}, path)                       # saving over a 0644 file keeps 0644
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.chmod(path, 0o600)
    umask(0o022)
    mg.save({"w": np.ones(2)}, path)                       # and over a 0600 one, 0600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    umask(0o027)
    mg.save({"w": np.zeros(2)}, tmp_path / "new.npz")
    assert stat.S_IMODE((tmp_path / "new.npz").stat().st_mode) == 0o640
    loss = (mg.Tensor(np.ones(2), requires_grad=True) * 2.0).sum()
    mg.draw(loss, tmp_path / "g.dot")
    assert stat.S_IMODE((tmp_path / "g.dot").stat().st_mode) == 0o640
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "cli.dot"                             # python -m minigrad graph: the umask is inherited
    subprocess.run([sys.executable, "-m", "minigrad", "graph", str(out)], env=env, check=True, capture_output=True,
                   timeout=120)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def test_saving_through_a_symbolic_link_updates_its_target(tmp_path):
    target = tmp_path / "ckpt_100.npz"
    mg.save({"w": np.zeros(2)}, target)
    link = tmp_path / "latest.npz"
    link.symlink_to("ckpt_100.npz")
    mg.save({"w": np.ones(2)}, link)
    assert link.is_symlink() and os.readlink(link) == "ckpt_100.npz"
    np.testing.assert_array_equal(mg.load(target)["w"], np.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["ckpt_100.npz", "latest.npz"]
    dangling = tmp_path / "next.npz"
    dangling.symlink_to("ckpt_200.npz")                    # a link to a file not yet written
    mg.save({"w": np.full(2, 2.0)}, dangling)
    np.testing.assert_array_equal(mg.load(tmp_path / "ckpt_200.npz")["w"], np.full(2, 2.0))


def test_distinct_keys_round_trip_to_their_own_arrays(tmp_path):
    state = {"w": np.zeros(1), "w.npy": np.ones(2), "w.npy.npy": np.full(3, 2.0), "a/b": np.full(4, 3.0)}
    mg.save(state, tmp_path / "c.npz")
    loaded = mg.load(tmp_path / "c.npz")
    assert list(loaded) == list(state)
    for name, value in state.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)


# ------------------------------------------------------------------ bounded memory

def _declaring_archive(path, shape, data_bytes, compression=zipfile.ZIP_DEFLATED):
    """An .npz whose member declares ``shape`` float64 but holds ``data_bytes`` zero bytes of data."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        with zf.open("w.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": shape})
            block = bytes(1 << 20)
            for start in range(0, data_bytes, len(block)):
                f.write(block[:min(len(block), data_bytes - start)])


def _peak_while(fn):
    tracemalloc.start()
    try:
        with pytest.raises(mg.CheckpointError) as info:
            fn()
        return tracemalloc.get_traced_memory()[1], str(info.value)
    finally:
        tracemalloc.stop()


def test_a_small_deflated_archive_declaring_a_huge_array_is_refused_with_bounded_memory(tmp_path):
    path = tmp_path / "bomb.npz"
    _declaring_archive(path, (1 << 25,), 8 << 25)         # 256 MiB of zeros, deflated to a fraction of 1 MB
    assert path.stat().st_size < (1 << 20)
    peak, message = _peak_while(lambda: mg.load(path))
    assert peak < (8 << 20), peak
    assert "bomb.npz" in message and "268435456 bytes" in message and "max_bytes" in message
    model = nn.Linear(2, 2)
    peak, message = _peak_while(lambda: model.load_state_dict(path))
    assert peak < (8 << 20) and "max_bytes" in message


def test_an_archive_whose_header_declares_more_than_it_holds_is_refused_before_allocating(tmp_path):
    path = tmp_path / "liar.npz"
    _declaring_archive(path, (1 << 28,), 1000, compression=zipfile.ZIP_STORED)    # 2 GiB declared, 1000 bytes
    peak, message = _peak_while(lambda: mg.load(path, max_bytes=1 << 40))
    assert peak < (8 << 20) and "truncated or corrupt" in message and "(268435456,)" in message


def test_max_bytes_raises_or_lowers_the_bound(tmp_path):
    path = tmp_path / "c.npz"
    mg.save({"a": np.zeros(1000), "b": np.zeros(500)}, path)       # 12000 bytes of arrays
    with pytest.raises(mg.CheckpointError, match="12000 bytes.*max_bytes=11999"):
        mg.load(path, max_bytes=11999)
    assert mg.load(path, max_bytes=12000)["a"].shape == (1000,)
    with pytest.raises(ValueError, match="max_bytes"):
        mg.load(path, max_bytes=-1)


def test_loading_a_path_into_a_model_checks_shapes_before_reading_any_value(tmp_path):
    path = tmp_path / "c.npz"
    mg.save({"weight": np.zeros((3, 2), np.float32), "bias": np.zeros(2, np.float32)}, path)
    data = bytearray(path.read_bytes())
    data[data.index(b"weight.npy") + 200] ^= 0xFF            # corrupt weight's values
    path.write_bytes(bytes(data))
    model = nn.Linear(2, 2)
    snap = snapshot(model)
    with pytest.raises(mg.CheckpointError, match=r"'weight': shape \(3, 2\) in the state, \(2, 2\) in the model"):
        model.load_state_dict(path)                        # the shapes, not the corrupt bytes, are reported
    assert_unchanged(model, snap)
    good = tmp_path / "good.npz"
    mg.save(make_model(3), good)
    other = make_model(4)
    other.load_state_dict(good)
    assert_unchanged(other, snapshot(make_model(3)))


# ------------------------------------------------------------------ files that are not checkpoints

def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("epoch 3: loss 0.1\n")
    with pytest.raises(mg.CheckpointError, match="notes.npz' is a text file") as info:
        mg.load(text)
    assert "allow_pickle" not in str(info.value)
    pt = tmp_path / "model.pt"                     # the layout torch.save writes
    with zipfile.ZipFile(pt, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/version", b"3\n")
    with pytest.raises(mg.CheckpointError, match="PyTorch checkpoint.*minigrad.interop"):
        mg.load(pt)
    odd = tmp_path / "odd.npz"
    with zipfile.ZipFile(odd, "w") as zf:
        zf.writestr("readme.txt", b"hello")
    with pytest.raises(mg.CheckpointError, match="'readme.txt', which is not a .npy array"):
        mg.load(odd)
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(mg.CheckpointError, match="empty"):
        mg.load(tmp_path / "empty.npz")


def test_a_real_torch_save_file_is_a_checkpoint_error_pointing_to_interop(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "model.pt")
    with pytest.raises(mg.CheckpointError, match="model.pt' is a PyTorch checkpoint.*minigrad.interop"):
        mg.load(tmp_path / "model.pt")


def test_load_reads_every_layout_numpy_writes(tmp_path):
    arrays = {"fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)), "big_endian": np.arange(5, dtype=">i4"),
              "scalar": np.array(3.5), "empty": np.zeros((0, 3), np.float32), "text": np.array(["ab", "cde"]),
              "flags": np.array([True, False]), "complex": np.array([1 + 2j]), "deflated": np.linspace(0, 1, 1000),
              "large": np.random.default_rng(0).standard_normal(3 << 20)}       # 24 MiB: read in blocks
    for compressed in (False, True):
        path = tmp_path / f"c{compressed}.npz"
        (np.savez_compressed if compressed else np.savez)(path, **arrays)
        loaded = mg.load(path)
        with np.load(path) as ref:
            assert list(loaded) == list(ref.files)
            for name in ref.files:
                assert loaded[name].dtype == ref[name].dtype and loaded[name].shape == ref[name].shape
                assert loaded[name].flags.f_contiguous == ref[name].flags.f_contiguous
                np.testing.assert_array_equal(loaded[name], ref[name], err_msg=name)

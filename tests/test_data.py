"""minigrad.data: DataLoader over TensorDataset and arrays, pad_sequences with Keras's meaning."""
import numpy as np
import pytest

import minigrad as mg
from minigrad.data import DataLoader, TensorDataset, pad_sequences

X = np.arange(23 * 2, dtype=np.float64).reshape(23, 2)      # row i is (2i, 2i + 1)
Y = np.arange(23)


def rows_seen(loader):
    return np.concatenate([yb.data for _, yb in loader])


@pytest.mark.parametrize("batch_size", [1, 4, 5, 23, 30])
@pytest.mark.parametrize("shuffle", [False, True])
def test_every_row_exactly_once_per_epoch(batch_size, shuffle):
    loader = DataLoader(TensorDataset(X, Y), batch_size=batch_size, shuffle=shuffle, seed=0)
    assert len(loader) == -(-23 // batch_size)
    for _ in range(3):
        batches = list(loader)
        assert len(batches) == len(loader)
        assert all(isinstance(xb, mg.Tensor) and isinstance(yb, mg.Tensor) for xb, yb in batches)
        assert [len(yb) for _, yb in batches[:-1]] == [batch_size] * (len(batches) - 1)
        seen = rows_seen(batches)
        assert sorted(seen.tolist()) == list(range(23))
        for xb, yb in batches:                         # x and y rows stay paired
            np.testing.assert_array_equal(xb.data, X[yb.data])
        if not shuffle:
            np.testing.assert_array_equal(seen, Y)


def test_drop_last_skips_the_short_batch():
    loader = DataLoader(TensorDataset(X, Y), batch_size=5, drop_last=True)
    assert len(loader) == 4
    batches = list(loader)
    assert [len(yb) for _, yb in batches] == [5, 5, 5, 5]
    np.testing.assert_array_equal(rows_seen(batches), np.arange(20))
    assert len(DataLoader(X, batch_size=30, drop_last=True)) == 0 and list(DataLoader(X, 30, drop_last=True)) == []


def test_shuffling_is_reproducible_with_a_seed_and_differs_between_epochs():
    orders = lambda loader: [rows_seen(loader).tolist() for _ in range(3)]
    a = orders(DataLoader(TensorDataset(X, Y), batch_size=4, shuffle=True, seed=7))
    b = orders(DataLoader(TensorDataset(X, Y), batch_size=4, shuffle=True, seed=7))
    assert a == b                                  # the same seed, the same epochs
    assert a[0] != a[1] != a[2]                    # reshuffled every epoch
    assert a != orders(DataLoader(TensorDataset(X, Y), batch_size=4, shuffle=True, seed=8))
    mg.seed(3)                                     # without a seed: minigrad's shared generator
    c = orders(DataLoader(TensorDataset(X, Y), batch_size=4, shuffle=True))
    mg.seed(3)
    assert c == orders(DataLoader(TensorDataset(X, Y), batch_size=4, shuffle=True))


def test_plain_arrays_and_other_datasets():
    batches = list(DataLoader(mg.Tensor(X), batch_size=10))       # one Tensor per batch, as PyTorch
    assert [b.shape for b in batches] == [(10, 2), (10, 2), (3, 2)]
    np.testing.assert_array_equal(np.concatenate([b.data for b in batches]), X)

    class Squares:                                  # any dataset with __len__ and __getitem__
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.array([i, i * i], np.float64), i

    pairs = [(np.array([1.0, 2.0]), 0), (np.array([3.0, 4.0]), 1), (np.array([5.0, 6.0]), 0)]
    xb, yb = next(iter(DataLoader(pairs, batch_size=2)))            # a list of pairs, collated as PyTorch
    np.testing.assert_array_equal(xb.data, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(yb.data, [0, 1])
    xb, yb = next(iter(DataLoader(Squares(), batch_size=3)))
    np.testing.assert_array_equal(xb.data, [[0, 0], [1, 1], [2, 4]])
    np.testing.assert_array_equal(yb.data, [0, 1, 2])
    row = TensorDataset(X, Y)[3]
    assert len(row) == 2 and row[1] == 3
    np.testing.assert_array_equal(row[0], X[3])


def test_batches_train_a_model():
    mg.seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]])
    model = mg.nn.Linear(3, 1, dtype=np.float64)
    opt = mg.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, seed=0)
    for _ in range(40):
        for xb, yb in loader:
            opt.zero_grad()
            mg.nn.functional.mse_loss(model(xb), yb).backward()
            opt.step()
    np.testing.assert_allclose(model.weight.data.ravel(), [1.0, -2.0, 0.5], atol=1e-3)


@pytest.mark.parametrize("make, error, message", [
    (lambda: TensorDataset(X, Y[:20]), ValueError, r"same number of rows, got shapes \(23, 2\), \(20,\)"),
    (lambda: TensorDataset(), ValueError, "at least one array"),
    (lambda: DataLoader(TensorDataset(X), batch_size=0), ValueError, "batch_size must be a positive integer, got 0"),
    (lambda: DataLoader(X, batch_size=2.0), ValueError, "batch_size must be a positive integer"),
    (lambda: DataLoader(X, seed="a"), TypeError, "seed must be an int"),
    (lambda: DataLoader(42), TypeError, "must have __len__ and __getitem__"),
])
def test_bad_arguments_are_clear_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


SEQS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], []]


@pytest.mark.parametrize("padding, truncating, maxlen, expected", [
    ("pre", "pre", None, [[0, 0, 1, 2, 3], [0, 0, 0, 4, 5], [6, 7, 8, 9, 10], [0, 0, 0, 0, 0]]),
    ("post", "pre", None, [[1, 2, 3, 0, 0], [4, 5, 0, 0, 0], [6, 7, 8, 9, 10], [0, 0, 0, 0, 0]]),
    ("pre", "pre", 3, [[1, 2, 3], [0, 4, 5], [8, 9, 10], [0, 0, 0]]),        # cut at the start: keep the end
    ("pre", "post", 3, [[1, 2, 3], [0, 4, 5], [6, 7, 8], [0, 0, 0]]),        # cut at the end
    ("post", "post", 2, [[1, 2], [4, 5], [6, 7], [0, 0]]),
    ("post", "pre", 4, [[1, 2, 3, 0], [4, 5, 0, 0], [7, 8, 9, 10], [0, 0, 0, 0]]),
])
def test_pad_sequences_as_keras(padding, truncating, maxlen, expected):
    padded, mask = pad_sequences(SEQS, maxlen=maxlen, padding=padding, truncating=truncating)
    np.testing.assert_array_equal(padded, expected)
    assert padded.dtype == np.asarray(SEQS[0]).dtype                 # token ids stay integers
    lengths = [min(len(s), padded.shape[1]) for s in SEQS]
    np.testing.assert_array_equal(mask.sum(1), lengths)
    np.testing.assert_array_equal(mask, np.array(expected) != 0)     # no sequence holds a 0 here
    if padding == "pre":                                             # real steps at the end
        assert all(mask[i, padded.shape[1] - n:].all() for i, n in enumerate(lengths))


def test_pad_sequences_with_features_value_and_dtype():
    seqs = [np.ones((2, 3)), np.full((4, 3), 2.0)]
    padded, mask = pad_sequences(seqs, value=-1.0, padding="post", dtype=np.float32)
    assert padded.shape == (2, 4, 3) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[0], [[1] * 3, [1] * 3, [-1] * 3, [-1] * 3])
    np.testing.assert_array_equal(mask, [[True, True, False, False], [True] * 4])
    assert pad_sequences([], maxlen=3)[0].shape == (0, 3)
    with pytest.raises(ValueError, match="does not fit dtype int32"):
        pad_sequences([[0.5, 1.5]], dtype="int32")                   # Keras would truncate silently
    with pytest.raises(ValueError, match="padding value 0.5 is not representable in dtype int64"):
        pad_sequences([[1, 2]], value=0.5)
    with pytest.raises(ValueError, match=r"same shape, got step shapes \[\(2,\), \(3,\)\]"):
        pad_sequences([np.ones((2, 3)), np.ones((2, 2))])
    with pytest.raises(ValueError, match="padding must be 'pre' or 'post'"):
        pad_sequences(SEQS, padding="both")


@pytest.mark.parametrize("padding", ["pre", "post"])
def test_padded_batches_with_their_mask_feed_an_lstm(padding):
    """Padding with the mask gives each sequence's own final state, as without padding."""
    mg.seed(0)
    lstm = mg.nn.LSTM(3, 4, dtype=np.float64)
    rng = np.random.default_rng(0)
    seqs = [rng.standard_normal((n, 3)) for n in (2, 5, 3)]
    padded, mask = pad_sequences(seqs, padding=padding)
    out = lstm(mg.Tensor(padded), mask=mask)
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(out.data[i], lstm(mg.Tensor(s[None])).data[0], rtol=1e-12)

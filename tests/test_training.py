"""minigrad.nn.fit as a Keras user expects: metrics, validation, callbacks, History, predict, one line per epoch."""
import io
import sys

import numpy as np
import pytest

import minigrad as mg
from minigrad import nn
from minigrad.data import DataLoader, TensorDataset


def blobs(n=120, seed=0):
    """Two separable clouds in 2-D, labels (n, 1) floats."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(np.float64)
    x = rng.standard_normal((n, 2)) * 0.7 + np.where(y[:, None] > 0, 1.5, -1.5)
    return x, y[:, None]


def linear(seed=0):
    mg.seed(seed)
    return nn.Linear(2, 1, dtype=np.float64)


class Recorder(nn.Callback):
    """Keeps the model's weights and logs after every epoch."""

    def on_train_begin(self, logs=None):
        self.weights, self.logs = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.state_dict())
        self.logs.append(dict(logs))


class Echo(nn.Module):
    """Returns its input: evaluate(Echo(), ...) scores given predictions."""

    def forward(self, x):
        return x if isinstance(x, mg.Tensor) else mg.Tensor(x)


def mean_abs_error(y_pred, y_true):
    return np.abs(y_pred - y_true).mean()


def test_fit_with_validation_and_metrics_on_a_small_task():
    x, y = blobs()
    xv, yv = blobs(60, seed=1)
    model = linear()
    hist = nn.fit(model, nn.BCEWithLogitsLoss(), mg.optim.Adam(model.parameters(), lr=0.05), x, y, epochs=15,
                  batch_size=16, validation_data=(xv, yv), metrics=["accuracy", mean_abs_error], verbose=0)
    assert isinstance(hist, nn.History) and hist.epoch == list(range(15))
    assert list(hist.history) == ["loss", "accuracy", "mean_abs_error", "val_loss", "val_accuracy",
                                  "val_mean_abs_error"]
    assert all(len(v) == 15 for v in hist.history.values())
    assert hist.history["loss"][-1] < hist.history["loss"][0] and hist.history["val_accuracy"][-1] >= 0.95
    # the validation values are those of the final model, computed independently
    logits = nn.predict(model, xv)
    assert hist.history["val_accuracy"][-1] == pytest.approx(((logits > 0) == (yv > 0.5)).mean(), abs=1e-12)
    assert hist.history["val_loss"][-1] == pytest.approx(nn.evaluate(model, nn.BCEWithLogitsLoss(), xv, yv), 1e-12)
    assert hist.history["val_mean_abs_error"][-1] == pytest.approx(np.abs(logits - yv).mean(), 1e-12)


def test_training_values_are_batch_size_weighted_means():
    """With lr = 0 the model is fixed, so an epoch's training values equal one pass over the set."""
    x, y = blobs(50)
    model = linear()
    hist = nn.fit(model, nn.BCEWithLogitsLoss(), mg.optim.SGD(model.parameters(), lr=0.0), x, y, epochs=2,
                  batch_size=16, metrics=["accuracy"], verbose=0)           # batches of 16, 16, 16, 2
    expected = nn.evaluate(model, nn.BCEWithLogitsLoss(), x, y, batch_size=50, metrics=["accuracy"])
    assert expected["accuracy"] == pytest.approx(((nn.predict(model, x) > 0) == (y > 0.5)).mean())
    for key in ("loss", "accuracy"):
        assert hist.history[key] == pytest.approx([expected[key]] * 2, rel=1e-12)


@pytest.mark.parametrize("pred, target, loss_fn, expected", [
    ([[0.3], [-0.1], [2.0], [-3.0]], [[1.0], [1.0], [0.0], [0.0]], nn.BCEWithLogitsLoss(), 0.5),   # logits: > 0
    ([[0.7], [0.4], [0.6], [0.2]], [[1.0], [1.0], [0.0], [0.0]], nn.BCELoss(), 0.5),               # probs: > 0.5
    ([[0.7], [0.6], [0.4], [0.2]], [[1.0], [1.0], [0.0], [0.0]], nn.BCELoss(), 1.0),
    ([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]], [1, 0, 0], nn.CrossEntropyLoss(), 2 / 3),  # argmax
    ([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]], [[0, 1, 0], [1, 0, 0], [1, 0, 0]], nn.MSELoss(), 2 / 3),
])
def test_accuracy_follows_the_output_shape_and_the_loss(pred, target, loss_fn, expected):
    pred, target = np.array(pred), np.array(target)
    logs = nn.evaluate(Echo(), loss_fn, pred, target, metrics=["accuracy"])
    assert logs["accuracy"] == pytest.approx(expected)


def test_validation_split_holds_out_the_last_rows():
    x, y = blobs(50)
    model = linear()
    hist = nn.fit(model, nn.MSELoss(), mg.optim.SGD(model.parameters(), lr=0.0), x, y, epochs=1, batch_size=8,
                  validation_split=0.2, verbose=0)
    assert hist.history["val_loss"][0] == pytest.approx(nn.evaluate(model, nn.MSELoss(), x[40:], y[40:]), 1e-12)
    assert hist.history["loss"][0] == pytest.approx(nn.evaluate(model, nn.MSELoss(), x[:40], y[:40]), 1e-12)
    opt = mg.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="validation_data or validation_split, not both"):
        nn.fit(model, nn.MSELoss(), opt, x, y, validation_split=0.2, validation_data=(x, y), verbose=0)
    with pytest.raises(ValueError, match="validation_split must be in"):
        nn.fit(model, nn.MSELoss(), opt, x, y, validation_split=1.5, verbose=0)
    with pytest.raises(ValueError, match="validation_split needs arrays x and y"):
        nn.fit(model, nn.MSELoss(), opt, DataLoader(TensorDataset(x, y), 8), validation_split=0.2, verbose=0)
    with pytest.raises(ValueError, match="validation_split=0.5 of 1 rows leaves no training rows"):
        nn.fit(model, nn.MSELoss(), opt, x[:1], y[:1], validation_split=0.5, verbose=0)


def test_fit_takes_dataloaders():
    x, y = blobs(64)
    model = linear()
    train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, seed=0)
    hist = nn.fit(model, nn.BCEWithLogitsLoss(), mg.optim.Adam(model.parameters(), lr=0.05), train, epochs=3,
                  validation_data=DataLoader(TensorDataset(x, y), batch_size=64), metrics=["accuracy"], verbose=0)
    assert hist.history["val_loss"][-1] == pytest.approx(nn.evaluate(model, nn.BCEWithLogitsLoss(), x, y), 1e-12)


def diverging_task():
    """Training pulls w toward 2 while the validation set wants 0: val_loss rises after every epoch,
    so the best epoch is the first."""
    x = np.linspace(-1, 1, 32)[:, None]
    model = nn.Linear(1, 1, dtype=np.float64)
    model.weight.data[...] = 0.0
    model.bias.data[...] = 0.0
    return model, x, 2 * x, (x, np.zeros_like(x))


@pytest.mark.parametrize("restore", [True, False])
def test_early_stopping_stops_and_restores_the_best_weights(restore):
    model, x, y, val = diverging_task()
    rec = Recorder()
    stop = nn.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=restore)
    hist = nn.fit(model, nn.MSELoss(), mg.optim.SGD(model.parameters(), lr=0.05), x, y, epochs=20, batch_size=8,
                  shuffle=False, validation_data=val, callbacks=[rec, stop], verbose=0)
    losses = hist.history["val_loss"]
    assert len(losses) == 3 and losses[0] < losses[1] < losses[2]     # best, then 2 epochs without improvement
    assert stop.stopped_epoch == 2 and stop.best_epoch == 0 and model.stop_training
    kept = rec.weights[0] if restore else rec.weights[2]
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, kept[name])
    assert not np.array_equal(rec.weights[0]["weight"], rec.weights[2]["weight"])


def test_early_stopping_on_a_rising_metric_and_a_missing_one():
    model, x, y, val = diverging_task()
    stop = nn.EarlyStopping(monitor="val_neg", patience=1, mode="max")
    neg = lambda pred, true: -np.mean((pred - true) ** 2)
    neg.__name__ = "neg"
    hist = nn.fit(model, nn.MSELoss(), mg.optim.SGD(model.parameters(), lr=0.05), x, y, epochs=20, batch_size=8,
                  validation_data=val, metrics=[neg], callbacks=[stop], verbose=0)
    assert len(hist.history["val_neg"]) == 2                           # -val_loss falls: stops after 1 epoch
    assert nn.EarlyStopping(monitor="val_accuracy").mode == "max" and nn.EarlyStopping().mode == "min"
    with pytest.raises(ValueError, match=r"monitor 'val_loss' is not among the logged values \['loss'\] \(pass "
                                         r"validation_data"):
        nn.fit(model, nn.MSELoss(), mg.optim.SGD(model.parameters(), lr=0.05), x, y, epochs=2,
               callbacks=[nn.EarlyStopping()], verbose=0)


def test_model_checkpoint_writes_loadable_files(tmp_path):
    model, x, y, val = diverging_task()
    rec = Recorder()
    best = nn.ModelCheckpoint(tmp_path / "best.npz", monitor="val_loss", save_best_only=True)
    every = nn.ModelCheckpoint(str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.4f}.npz"))
    hist = nn.fit(model, nn.MSELoss(), mg.optim.SGD(model.parameters(), lr=0.05), x, y, epochs=3, batch_size=8,
                  validation_data=val, callbacks=[rec, best, every], verbose=0)
    fresh = nn.Linear(1, 1, dtype=np.float64)
    fresh.load_state_dict(mg.load(tmp_path / "best.npz"))              # the first epoch's: the best val_loss
    np.testing.assert_array_equal(fresh.weight.data, rec.weights[0]["weight"])
    for epoch, loss in enumerate(hist.history["val_loss"]):
        saved = mg.load(tmp_path / f"ckpt-{epoch + 1:02d}-{loss:.4f}.npz")
        np.testing.assert_array_equal(saved["weight"], rec.weights[epoch]["weight"])
    assert len(list(tmp_path.glob("ckpt-*.npz"))) == 3
    with pytest.raises(ValueError, match=r"names 'val_acc', which is not 'epoch' or a logged value"):
        nn.fit(model, nn.MSELoss(), mg.optim.SGD(model.parameters(), lr=0.05), x, y, epochs=1,
               callbacks=[nn.ModelCheckpoint(str(tmp_path / "m-{val_acc}.npz"))], verbose=0)


def test_history_plot(tmp_path, monkeypatch):
    model, x, y, val = diverging_task()
    hist = nn.fit(model, nn.MSELoss(), mg.optim.SGD(model.parameters(), lr=0.05), x, y, epochs=3,
                  validation_data=val, verbose=0)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        hist.plot(tmp_path / "curves.png")
        assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setitem(sys.modules, "matplotlib", None)                # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        hist.plot(tmp_path / "curves.png")


def test_predict_is_batched_in_eval_mode_without_grad():
    mg.seed(0)
    model = nn.Sequential(nn.Linear(3, 4, dtype=np.float64), nn.Dropout(0.5), nn.Linear(4, 2, dtype=np.float64))
    seen = []
    model[0].register_forward_hook(lambda m, args, out: seen.append((args[0].shape, mg.is_grad_enabled(),
                                                                      model[1].training)))
    x = np.random.default_rng(0).standard_normal((70, 3))
    out = nn.predict(model, x, batch_size=32)
    assert isinstance(out, np.ndarray) and out.shape == (70, 2)
    assert seen == [((32, 3), False, False), ((32, 3), False, False), ((6, 3), False, False)]
    assert model.training and model[1].training                            # modes restored
    model.eval()
    np.testing.assert_allclose(out, model(mg.Tensor(x)).data, rtol=1e-14)
    with pytest.raises(ValueError, match="predict: batch_size must be a positive integer"):
        nn.predict(model, x, batch_size=0)
    with pytest.raises(TypeError, match="predict: x must be an array or Tensor with rows on axis 0"):
        nn.predict(model, DataLoader(x, batch_size=8))


def test_one_line_per_epoch_off_a_terminal(capsys):
    x, y = blobs(64)
    model = linear()
    nn.fit(model, nn.BCEWithLogitsLoss(), mg.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=3, batch_size=4,
           validation_data=(x, y), metrics=["accuracy"], verbose=1)          # 16 batches per epoch
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith(f"epoch {i + 1}/3: ") and "16/16 [100%]" in line
        assert "loss=" in line and "accuracy=" in line and "val_loss=" in line and "val_accuracy=" in line
    nn.fit(model, nn.BCEWithLogitsLoss(), mg.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=2, verbose=0)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("verbose, redraws", [(1, True), (2, False)])
def test_on_a_terminal_the_bar_redraws_one_line_per_epoch(monkeypatch, verbose, redraws):
    terminal = io.StringIO()
    terminal.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("MINIGRAD_PLAIN_PROGRESS", "1")
    x, y = blobs(64)
    model = linear()
    nn.fit(model, nn.MSELoss(), mg.optim.SGD(model.parameters(), lr=0.1), x, y, epochs=2, batch_size=4,
           verbose=verbose)
    text = terminal.getvalue()
    assert text.count("\n") == 2 and text.endswith("\n")
    finals = [line.rsplit("\r", 1)[-1] for line in text.split("\n")[:-1]]
    assert [f.startswith(f"epoch {i}/2: ") and "16/16 [100%]" in f for i, f in enumerate(finals, 1)] == [True] * 2
    # verbose 1 draws as it goes (here: the first batch, then the final line); verbose 2 only the final line
    assert text.count("\r") >= 4 if redraws else text.count("\r") == 2


def test_fit_argument_errors():
    model = linear()
    opt = mg.optim.SGD(model.parameters(), lr=0.1)
    x, y = blobs(8)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        nn.fit(model, nn.MSELoss(), opt, x, y, epochs=0)
    with pytest.raises(ValueError, match="verbose must be 0, 1 or 2"):
        nn.fit(model, nn.MSELoss(), opt, x, y, verbose=3)
    with pytest.raises(ValueError, match="metrics must be 'accuracy' or callables"):
        nn.fit(model, nn.MSELoss(), opt, x, y, metrics=["precision"], verbose=0)
    with pytest.raises(ValueError, match="same number of rows"):
        nn.fit(model, nn.MSELoss(), opt, x, y[:5], verbose=0)

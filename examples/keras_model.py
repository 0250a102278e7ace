"""The Q&A's Keras model, in minigrad: ``minigrad.interop.from_keras``.

The question minigrad answers was asked about this Keras model:
``Sequential([Input((None, 100)), LSTM(128), Dropout(0.5), Dense(1, activation="sigmoid")])``.
This script builds it in Keras (JAX backend), converts it with its weights, and shows that the
minigrad model predicts the same probabilities (to 1e-5, float32) and has the same summary
(117,248 / 0 / 129 parameters, 117,377 in all; minigrad lists the Dense's sigmoid as a row of its
own). Then minigrad writes its weights as a ``.weights.h5`` file that Keras loads back.

Without Keras it says how to install it. Run:  python examples/keras_model.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

import minigrad as mg
from minigrad import interop

INSTALL = ("This example needs Keras 3, a backend for it and h5py:\n"
           "    pip install keras jax jaxlib h5py        (or: pip install minigrad[interop])\n"
           "It runs Keras on JAX (KERAS_BACKEND=jax, set here if unset).")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller batch (the tests' setting)")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import h5py  # noqa: F401
        import keras
        from keras import layers
    except ImportError as err:
        print(f"Keras is not available ({err}).\n{INSTALL}")
        return 0

    kmodel = keras.Sequential([keras.Input((None, 100)), layers.LSTM(128), layers.Dropout(0.5),
                               layers.Dense(1, activation="sigmoid")])
    kmodel.summary()
    model = interop.from_keras(kmodel)
    print(mg.nn.summary(model, (None, 100)))

    batch = 8 if args.quick else 64
    x = np.random.default_rng(0).standard_normal((batch, 15, 100)).astype(np.float32)
    diff = np.abs(model(x).numpy() - kmodel.predict(x, verbose=0)).max()
    print(f"predictions of {batch} sequences: minigrad and Keras differ by at most {diff:.1e}")

    # minigrad's weights back into Keras: a changed bias shows the file really carries them
    model[2].bias.data = model[2].bias.data + 0.25
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "qa.weights.h5")
        interop.save_keras_weights(model, path)
        kmodel.load_weights(path)
    back = np.abs(model(x).numpy() - kmodel.predict(x, verbose=0)).max()
    print(f"after save_keras_weights and Keras's load_weights they differ by at most {back:.1e}")
    if max(diff, back) > 1e-5:
        print("FAIL: the predictions differ")
        return 1
    print("The same model in both.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

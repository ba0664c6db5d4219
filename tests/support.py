"""Shared test helpers: example models, polling with a deadline, v2 requests."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
import tritonclient.grpc as triton
from sklearn.base import ClassifierMixin
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.tree import DecisionTreeClassifier
from tritonclient.utils import InferenceServerException

IRIS_X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)


@dataclass(frozen=True)
class ExampleModel:
    path: Path  # a directory holding model.joblib
    expected: np.ndarray  # sklearn's own predictions for IRIS_X


def train_iris(directory: Path, kind: str) -> ExampleModel:
    x, y = load_iris(return_X_y=True)
    model: ClassifierMixin
    if kind == "logistic":
        model = LogisticRegression(max_iter=500)
    elif kind == "flipped":  # labels reversed: predictions differ from every other example model
        model = LogisticRegression(max_iter=500)
        y = 2 - y
    elif kind == "tree":
        model = DecisionTreeClassifier(random_state=0)
    else:  # nearest neighbours keep their training set: iris repeated to ~40 MB makes a slow load
        model = KNeighborsClassifier(n_neighbors=1)
        x, y = np.repeat(x, 8000, axis=0), np.repeat(y, 8000)
    model.fit(x, y)
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, directory / "model.joblib")
    return ExampleModel(directory, model.predict(IRIS_X))


def poll_until(
    check: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition", interval_s: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s}s")
        time.sleep(interval_s)


def iris_input() -> triton.InferInput:
    tensor = triton.InferInput("input-0", list(IRIS_X.shape), "FP32")
    tensor.set_data_from_numpy(IRIS_X)
    return tensor


def predict(client: triton.InferenceServerClient, name: str, **kwargs: object) -> np.ndarray:
    result = client.infer(name, [iris_input()], **kwargs)  # type: ignore[arg-type]
    return np.asarray(result.as_numpy("predict")).ravel()


def train_boosted(directory: Path, library: str) -> ExampleModel:
    """An xgboost (model.json) or lightgbm (model.bst) iris classifier; expected = predicted class."""
    x, y = load_iris(return_X_y=True)
    directory.mkdir(parents=True, exist_ok=True)
    if library == "xgboost":
        import xgboost

        classifier = xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(x, y)
        classifier.save_model(directory / "model.json")
        return ExampleModel(directory, classifier.predict(IRIS_X))
    import lightgbm

    booster = lightgbm.train(
        {"objective": "multiclass", "num_class": 3, "verbose": -1}, lightgbm.Dataset(x, y), 10
    )
    booster.save_model(str(directory / "model.bst"))
    return ExampleModel(directory, booster.predict(IRIS_X).argmax(axis=1))


@dataclass
class Traffic:
    """Background clients sending requests through one pod until stopped; counts outcomes."""

    address: str
    model_id: str
    threads: int = 3
    outcomes: Counter[str] = field(default_factory=Counter)
    answers: list[tuple[int, ...]] = field(default_factory=list)  # predictions, in the order they came
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Traffic:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)

    def _run(self) -> None:
        client = triton.InferenceServerClient(self.address)
        while not self._stop.is_set():
            try:
                answer = tuple(int(v) for v in predict(client, self.model_id, client_timeout=20))
                self.answers.append(answer)
                self.outcomes["ok"] += 1
            except InferenceServerException as e:
                self.outcomes[str(e.status())] += 1

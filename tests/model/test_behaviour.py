"""Behavioural tests of the classifier: what a user of the model would notice."""

import numpy as np
import torch

from ml_tasks.core.settings import load_params
from ml_tasks.data.prepared import PreparedData
from ml_tasks.model.classifier import Classifier
from ml_tasks.model.evaluation import evaluate
from ml_tasks.model.training import fit

PARAMS = load_params()


def classifier(module: torch.nn.Module, data: PreparedData) -> Classifier:
    module.eval()
    return Classifier(module=module, classes=data.classes, image_size=8, uri="test")


def test_default_training_passes_the_registration_floors(digits: PreparedData) -> None:
    model, history = fit(digits, PARAMS["train"], progress=False)
    x, y = digits.part("test")
    metrics = evaluate(classifier(model, digits).predict_proba(x), y, digits.classes)
    assert metrics["accuracy"] >= PARAMS["validate"]["min_accuracy"]
    assert metrics["macro_f1"] >= PARAMS["validate"]["min_macro_f1"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert np.array(metrics["confusion_matrix"]).sum() == len(y)


def test_training_is_reproducible(digits: PreparedData) -> None:
    hp = {**PARAMS["train"], "epochs": 2}
    first, _ = fit(digits, hp, progress=False)
    second, _ = fit(digits, hp, progress=False)
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_faint_noise_rarely_changes_a_prediction(digits: PreparedData) -> None:
    model, _ = fit(digits, PARAMS["train"], progress=False)
    clf = classifier(model, digits)
    x, _ = digits.part("test")
    noise = np.random.default_rng(0).uniform(-1 / 255, 1 / 255, size=x.shape).astype(np.float32)
    before = clf.predict_proba(x).argmax(1)
    after = clf.predict_proba(np.clip(x + noise, 0, 1)).argmax(1)
    assert (before != after).mean() < 0.02


def test_probabilities_are_a_distribution(digits: PreparedData) -> None:
    model, _ = fit(digits, {**PARAMS["train"], "epochs": 1}, progress=False)
    proba = classifier(model, digits).predict_proba(digits.x[:50])
    assert proba.shape == (50, 10)
    assert np.allclose(proba.sum(1), 1.0, atol=1e-5) and (proba >= 0).all()

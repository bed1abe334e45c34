"""Shared fixtures: real teachers trained once per session on data scikit-learn ships."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A run started in the background by a non-interactive shell (`cmd &`, nohup) inherits SIGINT
# ignored, and so would every `cake serve` and `cake submit` the tests start (an ignored signal
# survives exec): the Ctrl-C tests would hang and `cake serve` would not stop on SIGINT. A
# handler (unlike SIG_IGN) is reset to the default at exec, so children get a working Ctrl-C.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from examples.teachers import TrainedTeacher, train_digits_cnn, train_tabular_mlp  # noqa: E402


class SavedTeacher:
    """A trained teacher exported as TorchScript, with its held-out real split as ``.npz``."""

    def __init__(self, trained: TrainedTeacher, folder: Path) -> None:
        self.trained = trained
        self.path = trained.save(folder / f"{trained.name}.pt")
        self.eval_path = trained.save_eval(folder / f"{trained.name}_test.npz")
        self.input_shape = trained.input_shape
        self.num_classes = trained.num_classes
        self.accuracy = trained.test_accuracy


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory: pytest.TempPathFactory) -> SavedTeacher:
    saved = SavedTeacher(train_digits_cnn(seed=0), tmp_path_factory.mktemp("digits"))
    assert saved.accuracy > 0.95, "the digits teacher itself should be good"
    return saved


@pytest.fixture(scope="session")
def wine_teacher(tmp_path_factory: pytest.TempPathFactory) -> SavedTeacher:
    saved = SavedTeacher(train_tabular_mlp("wine", seed=0), tmp_path_factory.mktemp("wine"))
    assert saved.accuracy > 0.9, "the wine teacher itself should be good"
    return saved

from pathlib import Path

import pytest

from ml_tasks.data.synthetic import write_digits


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's 1,797 digits written as data/images would hold them (read-only use)."""
    folder = tmp_path_factory.mktemp("digits") / "images"
    write_digits(folder)
    return folder

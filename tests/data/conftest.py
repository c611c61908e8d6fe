import shutil
from pathlib import Path

import pytest

from ml_tasks.data.synthetic import write_digits


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's 1,797 digits written as data/images would hold them (read-only use)."""
    folder = tmp_path_factory.mktemp("digits") / "images"
    write_digits(folder)
    return folder


@pytest.fixture
def digits_copy(digits_dir: Path, tmp_path: Path) -> Path:
    """A copy of the digits this test may change (``<tmp_path>/images``)."""
    folder = tmp_path / "images"
    shutil.copytree(digits_dir, folder)
    return folder

import pytest

from ml_tasks.core.settings import load_settings
from ml_tasks.data.prepared import PreparedData, load_prepared
from ml_tasks.data.synthetic import write_digits
from ml_tasks.prepare import prepare


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    """The digits, prepared as the pipeline prepares them."""
    root = tmp_path_factory.mktemp("model")
    mp = pytest.MonkeyPatch()
    mp.setenv("FLYWHEEL_HOME", str(root / "home"))
    try:
        write_digits(root / "images")
        prepare(load_settings(), data_dir=root / "images", dataset_version="digits")
        yield load_prepared(load_settings(), "digits")
    finally:
        mp.undo()

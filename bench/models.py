"""The small digits champion the serving benchmark and the model-service tests serve; it lives
in :mod:`ml_tasks.model.small_champion`, where tests import it without importing bench."""

from ml_tasks.model.small_champion import DigitsChampion, register_digits

__all__ = ["DigitsChampion", "register_digits"]

"""Sensors: waits that defer to the triggerer (provider layout)."""

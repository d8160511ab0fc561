"""The rule library and its presets, written against the backend interface."""

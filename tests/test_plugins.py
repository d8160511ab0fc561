"""The built-ins register through the same entry points a plugin would use."""

from __future__ import annotations

import pytest
from lrpir.rules.presets import Preset, available_presets

from lrpir import plugins

pytest.importorskip("torch")


def test_builtins_are_entry_points_that_satisfy_the_protocols():
    assert isinstance(plugins.frontends()["onnx"], plugins.Frontend)
    assert isinstance(plugins.backends()["torch"], plugins.Backend)
    presets = plugins.rule_presets()
    assert {"epsilon", "gradient-x-input"} <= set(presets)
    assert all(isinstance(p, Preset) for p in presets.values())
    assert {"epsilon", "gradient-x-input"} <= set(available_presets())
    listed = {(p.group, p.name) for p in plugins.all_plugins() if p.loaded}
    assert ("lrpir.frontends", "onnx") in listed and ("lrpir.backends", "torch") in listed

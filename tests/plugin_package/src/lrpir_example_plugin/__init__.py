"""An example lrpir plugin, installed beside lrpir like any third-party one.

It registers a frontend (``npz-mlp``: dense ReLU MLPs saved as ``*.mlp.npz``), a minimal NumPy
backend (``example-numpy``: Gemm and Relu only) and a rule preset (``example-zplus-everywhere``).
``docs/plugins.md`` of lrpir walks through it.
"""

from lrpir_example_plugin.backend import BACKEND, NumpyBackend
from lrpir_example_plugin.frontend import FRONTEND, NpzMlpFrontend, save_mlp
from lrpir_example_plugin.rules import ZPLUS_EVERYWHERE, PlainEpsilonRule

__all__ = ["BACKEND", "FRONTEND", "ZPLUS_EVERYWHERE", "NpzMlpFrontend", "NumpyBackend", "PlainEpsilonRule",
           "save_mlp"]

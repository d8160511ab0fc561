"""lrpir: a framework-neutral attribution compiler for Layer-wise Relevance Propagation.

Frontends lower a model (ONNX, a torch module, a JAX callable) into one operation IR; a rule
engine gives every op an LRP rule; a promise scheduler plans the relevance pass; a backend runs it.
"""

from lrpir.api import Explainer, Explanation, compile, explain
from lrpir.conservation import Conservation
from lrpir.errors import (
    InputError,
    LrpirError,
    LrpirWarning,
    ModelLoadError,
    RuleError,
    UnsupportedOpError,
)
from lrpir.heatmap import relevance_to_rgb, save_heatmap
from lrpir.rules.presets import Rules
from lrpir.text import (
    TokenRelevance,
    save_tokens_html,
    token_ranking,
    token_relevance,
    token_strings,
    tokens_html,
)

__version__ = "0.1.0"

__all__ = [
    "Conservation",
    "Explainer",
    "Explanation",
    "InputError",
    "LrpirError",
    "LrpirWarning",
    "ModelLoadError",
    "RuleError",
    "Rules",
    "TokenRelevance",
    "UnsupportedOpError",
    "compile",
    "explain",
    "relevance_to_rgb",
    "save_heatmap",
    "save_tokens_html",
    "token_ranking",
    "token_relevance",
    "token_strings",
    "tokens_html",
]

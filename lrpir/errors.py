"""The errors lrpir raises on bad input: each names the file, op or argument at fault."""


class LrpirError(Exception):
    """Base class: anything a user can cause and fix."""


class ModelLoadError(LrpirError):
    """The model file or object cannot be read or lowered."""


class UnsupportedOpError(LrpirError):
    """An op has no lowering, no implementation or no rule."""


class InputError(LrpirError, ValueError):
    """The inputs, target or options given to explain/compile do not fit the model."""


class RuleError(LrpirError, ValueError):
    """A rule configuration names unknown ops, rules or presets, or misses a parameter."""


class LrpirWarning(UserWarning):
    """Something lrpir chose for you that you may want to choose yourself (a fallback route)."""

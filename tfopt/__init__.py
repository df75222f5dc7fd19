"""tfopt: turn a TensorFlow model as training left it into lean, verified deployment artifacts.

    import tfopt
    result = tfopt.freeze("saved_models/keras_cnn", "out/keras_cnn")
    print(result.summary()); assert result.exit_code == 0
"""
from tfopt.version import __version__

__all__ = ["FreezeOptions", "FreezeResult", "__version__", "compare", "freeze"]


def __getattr__(name):
    # lazy, so that the CLI can quiet TensorFlow's logging before TensorFlow is imported
    if name == "freeze":
        from tfopt.api import freeze
        return freeze
    if name == "compare":
        from tfopt.api import compare
        return compare
    if name == "FreezeOptions":
        from tfopt.options import FreezeOptions
        return FreezeOptions
    if name == "FreezeResult":
        from tfopt.results import FreezeResult
        return FreezeResult
    raise AttributeError(f"module 'tfopt' has no attribute {name!r}")

"""`python -m tfopt.freeze SRC -o OUT`: the freeze command line.

`tfopt.freeze(...)` is the Python API; importing this module must not shadow it, so the
module itself forwards calls to tfopt.api.freeze.
"""
import sys
import types

from tfopt.commands import main


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from tfopt.api import freeze
        return freeze(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main(["freeze"] + sys.argv[1:]))

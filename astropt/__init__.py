"""astropt: large observation models of galaxy images.

``import astropt`` loads only the core: :mod:`astropt.tokens`, :mod:`astropt.model`
and :mod:`astropt.io`. Everything else (the data pipeline, training, export,
probes, finetuning, the Hub) is imported by whoever uses it, and a finetuned
model folder imports its head's module when it is loaded (:mod:`astropt.hub`).
"""

__version__ = "0.1.0"

from astropt import io, tokens  # noqa: E402, F401  the core
from astropt.model import GPT  # noqa: E402

# GPT.from_pretrained, save_pretrained and push_to_hub live in astropt.hub (above
# astropt.model in the import order), which installs them on GPT when it is imported.
# Until then these stand-ins import it on first call, so the methods work after any
# astropt import without `import astropt` paying for the Hub, safetensors and interop.


def _hub_method(name: str):
    def call(*args, **kwargs):
        from astropt import hub  # installs the real method on GPT for later calls

        return getattr(hub, f"_gpt_{name}")(*args, **kwargs)

    call.__name__, call.__qualname__ = name, f"GPT.{name}"
    call.__doc__ = f"See :mod:`astropt.hub` (imported on first call): ``GPT.{name}``."
    return call


for _name in ("save_pretrained", "from_pretrained", "push_to_hub"):
    _method = _hub_method(_name)
    setattr(GPT, _name, classmethod(_method) if _name == "from_pretrained" else _method)
del _name, _method

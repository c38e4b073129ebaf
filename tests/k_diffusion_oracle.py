"""k-diffusion 0.1.1.post1's modules as test oracles, loaded without the package's __init__ (which imports all of
k-diffusion: torchvision, which does not import beside this torch, wandb, clean-fid, ...). Stub modules stand in for
the imports of the loaded module that the tests do not reach."""
import importlib
import importlib.util
import sys
import types


def _stub(name, **attrs):
  module = sys.modules.get(name) or types.ModuleType(name)
  module.__dict__.update(attrs)
  sys.modules.setdefault(name, module)
  return module


def load(submodule, stubs=("utils", "sampling")):
  """k_diffusion.<submodule>, its sibling modules `stubs` and its third-party imports replaced by empty modules."""
  if "k_diffusion" not in sys.modules:
    spec = importlib.util.find_spec("k_diffusion")
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = package
  for name in stubs:
    setattr(sys.modules["k_diffusion"], name, _stub(f"k_diffusion.{name}"))
  for name in ("dctorch", "dctorch.functional", "einops"):
    try:
      importlib.import_module(name)
    except ImportError:
      _stub(name, functional=None, rearrange=None, repeat=None)  # the names layers.py imports from them
  return importlib.import_module(f"k_diffusion.{submodule}")

"""Name -> object registries, so configs can select schedules, samplers, models and datasets by name."""
import importlib


class Registry:
  """A dictionary filled by a `@register(name)` decorator, with helpful errors on unknown names."""

  def __init__(self, kind):
    self.kind = kind
    self._items = {}

  def register(self, name):
    def wrap(obj):
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is already registered")
      self._items[name] = obj
      return obj
    return wrap

  def get(self, name):
    if name not in self._items:
      raise ValueError(f"Unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(sorted(self._items))}")
    return self._items[name]

  def names(self):
    return sorted(self._items)


def import_modules(names):
  """Imports the comma-separated modules `names` (config.imports), whose decorators register what they define."""
  for name in [n.strip() for n in names.split(",") if n.strip()]:
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ValueError(f"config.imports: cannot import {name!r} ({e}); give importable module names, "
                       "e.g. --config.imports=my_package.samplers") from e

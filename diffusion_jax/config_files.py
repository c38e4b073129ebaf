"""Config files and values written as text, as the command line, run specs (`ddim:50:eta=0.5`), ablation sweeps and
converted checkpoints give them: one loader and one parser for all of them."""
import importlib.util
import os


def load_config(spec):
  """The ConfigDict of a config file `path[:argument]`, as --config reads it: get_config(argument) or get_config()."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"Config file {path} not found")
  module_spec = importlib.util.spec_from_file_location(f"config_{abs(hash(os.path.abspath(path)))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def parse_value(text, like=None):
  """`text` as a value of the type of `like` (a field's current value or an option's default): true / false for a
  bool, a comma-separated tuple, an int, a number for a float (an int literal stays an int), a string. With `like` None
  the type follows the text: int, float, true / false, else a string. ValueError names the expected type."""
  if like is None:
    for cast in (int, float):
      try:
        return cast(text)
      except ValueError:
        pass
    return {"true": True, "false": False}.get(text.lower(), text)
  if isinstance(like, bool):
    if text.lower() not in ("true", "false"):
      raise ValueError(f"{text!r} is not true or false")
    return text.lower() == "true"
  if isinstance(like, tuple):
    return tuple(parse_value(v.strip(), like[0] if like else None) for v in text.strip("()").split(",") if v.strip())
  if isinstance(like, float):
    try:
      return int(text)  # "1" stays 1, as written (a run's label, eta1, keeps its name)
    except ValueError:
      pass
    try:
      return float(text)
    except ValueError:
      raise ValueError(f"{text!r} is not a number") from None
  if isinstance(like, int):
    try:
      return int(text)
    except ValueError:
      raise ValueError(f"{text!r} is not an integer") from None
  return text


def parse_spec(spec, defaults, kind):
  """(name, {key: value}) of a spec name[:key=value...] (a schedule's, a path's): each key must be one of `defaults`
  (a dict, or a function of the name giving one) and is parsed as the type of its default; anything else names the
  valid options."""
  name, *options = spec.split(":")
  valid = defaults(name) if callable(defaults) else defaults
  given = {}
  for option in options:
    k, sep, v = option.partition("=")
    if not sep or k not in valid:
      raise ValueError(f"{kind.capitalize()} option {option!r} of {name!r}: valid options are "
                       + (", ".join(f"{o}={d}" for o, d in valid.items()) or "none"))
    given[k] = parse_value(v, valid[k])
  return name, given

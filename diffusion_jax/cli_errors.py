"""How the command-line tools report what a user can fix (a config value, a path, missing weights or data, a damaged
or locked workdir): the error's own message, without the library's trace, and exit status 1. The full trace:
--verbosity=1 (absl) or DIFFUSION_JAX_TRACEBACK=1."""
import contextlib
import os
import sys

from absl import logging

USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, FloatingPointError, ImportError)


@contextlib.contextmanager
def short_errors():
  try:
    yield
  except USER_ERRORS as e:
    internal = type(e).__module__.split(".")[0] in ("jax", "jaxlib")  # XLA's own errors (memory, ...) keep their trace
    if internal or logging.get_verbosity() >= 1 or os.environ.get("DIFFUSION_JAX_TRACEBACK", "0") not in ("", "0"):
      raise
    sys.exit(f"Error: {e}\n(the full trace: --verbosity=1 or DIFFUSION_JAX_TRACEBACK=1)")

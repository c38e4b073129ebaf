"""The tiny digits config used by the tests (also usable from the command line)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import tiny_config  # noqa: E402


def get_config():
  return tiny_config()

"""The package installs as declared: pyproject.toml's pinned dependencies are requirements.txt's (the pins the tests
run with), its console script is the command line, and ruff's configuration is the one CI runs."""
import os
import tomllib

from conftest import ROOT, run_python


def pins(path):
  with open(path) as f:
    return {line.split("==")[0].lower(): line.strip() for line in f if "==" in line and not line.startswith("#")}


def test_pyproject_pins_are_the_tested_requirements():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  declared = {d.split("==")[0].lower(): d for d in project["dependencies"] + project["optional-dependencies"]["test"]}
  tested = pins(os.path.join(ROOT, "requirements.txt"))
  assert declared == tested
  assert project["scripts"]["diffusion-jax"] == "diffusion_jax.main:cli"


def test_console_entry_point_is_the_command_line(tmp_path):
  proc = run_python(["-c", "import sys; from diffusion_jax.main import cli; sys.argv = ['diffusion-jax', "
                     f"'--config=tests/tiny_config.py', '--workdir={tmp_path}', '--mode=fit']; cli()"], check=False)
  assert proc.returncode == 1 and "Error: Unknown mode 'fit'; valid modes: train, sample" in proc.stderr

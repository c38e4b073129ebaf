"""The timestep-weighting study on the demo data: uniform (L_simple), P2 with gamma 0.5 and 1 (k = 1) and min-SNR-5,
on configs/digits.py at one fixed training budget, several seeds each, through the ablation runner (resumable).

  python -m experiments.weighting_digits [--out=runs/weighting_digits] [--seeds=3] [--steps=600] [--dry_run]"""
import os

from absl import app, flags, logging

from experiments import ablate

WEIGHTINGS = "training.weighting+training.p2_gamma=uniform+1.0,p2+0.5,p2+1.0,min_snr+1.0"

_OUT = flags.DEFINE_string("out", "runs/weighting_digits", "Results directory.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per weighting.")
_STEPS = flags.DEFINE_integer("steps", 600, "Training steps of every run (the fixed budget).")
_SAMPLER = flags.DEFINE_string("sampler", "ddim:50", "Sampler runs scored for every model.")
_DRY = flags.DEFINE_bool("dry_run", False, "Only write and print the commands.")


def fixed(steps, sampler):
  return [f"training.num_steps={steps}", f"training.checkpoint_every={steps}", "training.sample_every=0",
          "training.min_snr_gamma=5.0", f"sample.runs={sampler}"]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runs = ablate.plan("configs/digits.py", [WEIGHTINGS], fixed(_STEPS.value, _SAMPLER.value), _SEEDS.value, _OUT.value)
  if _DRY.value:
    print("\n".join(ablate.write_commands(runs, _OUT.value)))
    return
  status = ablate.execute(runs, _OUT.value)
  ablate.write_results(runs, _OUT.value, status, title=f"Timestep weightings on the digits ({_STEPS.value} steps, "
                       f"batch 128, {_SAMPLER.value}, 500 samples per run)")
  logging.info("Wrote %s", os.path.join(_OUT.value, "results.md"))


if __name__ == "__main__":
  app.run(main)

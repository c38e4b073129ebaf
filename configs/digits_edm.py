"""EDM on the demo data (Karras et al. 2022): the digits U-Net inside EDM's preconditioning D(x; sigma), trained on
sigma from 0.002 to 80 drawn log-normal(-1.2, 1.2) with EDM's loss weighting, and sampled by EDM's Heun sampler, by
DPM-Solver++ and DDIM through the path's log-SNR, and by the probability-flow ODE. Minutes on 2 CPU cores.
Run: python -m diffusion_jax.main --config=configs/digits_edm.py --workdir=runs/digits_edm --mode=all"""
from configs.digits import get_config as get_digits_config


def get_config():
  c = get_digits_config()
  c.diffusion.sde = "edm"
  c.diffusion.prediction = "x0"
  c.model.precondition = "edm"
  c.training.weighting = "edm"
  c.training.t_sampling = "lognormal_sigma"
  c.sample.runs = "edm:10,edm:20,dpm_solver++:10,dpm_solver++:20,ddim:20,ode:20:rtol=0.001:atol=0.001"
  return c

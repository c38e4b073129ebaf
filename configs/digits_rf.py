"""Rectified flow on the demo data (Liu et al. 2022, with Esser et al. 2024's recipe): the digits U-Net on the path
x_t = (1 - t) x_0 + t eps, trained on the velocity eps - x_0 at logit-normal(0, 1) times; sampled by the flow sampler
(Euler, Heun, SD3's shift) and by DPM-Solver++ and DDIM through the path's log-SNR. Minutes on 2 CPU cores, like
configs/digits.py.
Run: python -m diffusion_jax.main --config=configs/digits_rf.py --workdir=runs/digits_rf --mode=all"""
from configs.digits import get_config as get_digits_config


def get_config():
  c = get_digits_config()
  c.diffusion.sde = "rectified_flow"
  c.diffusion.prediction = "velocity"
  c.training.t_sampling = "logit_normal"
  c.sample.runs = ("flow:10,flow:20,flow:50,flow:10:solver=heun,flow:20:shift=3.0,dpm_solver++:10,dpm_solver++:20,"
                   "ddim:20")
  return c

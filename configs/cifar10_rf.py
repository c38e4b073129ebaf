"""Rectified flow on CIFAR-10 (Liu et al. 2022's 1-rectified flow, with Esser et al. 2024's logit-normal times):
the score-SDE DDPM++ backbone (61.8M parameters) on x_t = (1 - t) x_0 + t eps, velocity target, Adam 2e-4 with
5k warmup, batch 128, EMA 0.9999; sampled by the flow sampler and by DPM-Solver++.
Run: python -m diffusion_jax.main --config=configs/cifar10_rf.py --workdir=runs/cifar10_rf --mode=all"""
from configs.score_sde import get_score_sde_config


def get_config():
  c = get_score_sde_config("vp")
  c.diffusion.sde = "rectified_flow"
  c.diffusion.prediction = "velocity"
  c.training.t_sampling = "logit_normal"
  c.sample.runs = "flow:50,flow:20:solver=heun,dpm_solver++:20"
  return c

"""DDPM++ cont. (VP) on CIFAR-10 (Song et al. 2021, Table 3): VP SDE, beta 0.1..20, 61.8M-parameter DDPM++;
sampled with the Euler-Maruyama predictor, no corrector (N = 1000), and the probability-flow ODE (RK45, 1e-5)."""
from configs.score_sde import get_score_sde_config


def get_config():
  c = get_score_sde_config("vp")
  c.sample.runs = "pc:1000:predictor=euler_maruyama:corrector=none,ode:100,ddim:100,dpm_solver++:20"
  return c

"""DDPM++ cont. (sub-VP) on CIFAR-10 (Song et al. 2021, Table 3): the sub-VP SDE with the VP's beta 0.1..20 and the
61.8M-parameter DDPM++; Euler-Maruyama predictor without corrector, and the probability-flow ODE (NLL 3.02 bits/dim
for the shallow model)."""
from configs.score_sde import get_score_sde_config


def get_config():
  c = get_score_sde_config("subvp")
  c.sample.runs = "pc:1000:predictor=euler_maruyama:corrector=none,ode:100"
  return c

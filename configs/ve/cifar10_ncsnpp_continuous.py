"""NCSN++ cont. (VE) on CIFAR-10 (Song et al. 2021, Table 3; FID 2.38 with PC sampling): VE SDE with
sigma 0.01..50, the 62.8M-parameter NCSN++ (FIR resampling, residual input pyramid, Gaussian Fourier features of
log sigma with scale 16), EMA 0.999; reverse-diffusion predictor + Langevin corrector (snr 0.16), N = 1000.
score_sde feeds the VE model data in [0, 1]; here data are in [-1, 1] as for every model (sigma_max stays 50, the
paper's value, which is still above the largest pairwise distance of CIFAR-10 images)."""
from configs.score_sde import get_score_sde_config


def get_config():
  c = get_score_sde_config("ve")
  c.model.fir = True
  c.model.embedding_type = "fourier"
  c.model.progressive_input = "residual"
  c.training.ema_decay = 0.999
  c.sample.runs = "pc:1000:predictor=reverse_diffusion:corrector=langevin:snr=0.16,ode:100"
  return c

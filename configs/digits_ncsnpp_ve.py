"""Score-SDE on the demo data: a small class-conditional NCSN++ (FIR resampling, residual input pyramid, Fourier
features of log sigma) trained in continuous time on the VE SDE (sigma 0.01..50), sampled with PC and the
probability-flow ODE. Minutes on 2 CPU cores, like configs/digits.py."""
import ml_collections

from configs.digits import get_config as get_digits_config
from configs.score_sde import get_score_sde_config


def get_config():
  c = get_digits_config()
  c.diffusion.sde = "ve"
  c.model = ml_collections.ConfigDict(get_score_sde_config("ve").model.to_dict())
  c.model.update(dict(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, fir=True,
                      embedding_type="fourier", progressive_input="residual", num_classes=10))
  c.sample.runs = ("pc:250:predictor=reverse_diffusion:corrector=langevin:snr=0.16,"
                   "pc:500:predictor=reverse_diffusion:corrector=none,ode:20:rtol=0.001:atol=0.001")
  return c

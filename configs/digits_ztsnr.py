"""Zero terminal SNR on the demo data (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
flawed"): the demo U-Net on the linear schedule rescaled to alpha_bar_T = 0 (diffusion.zero_terminal_snr), trained with
v-prediction and sampled from t = T (trailing spacing), the paper's fixes together. Compare its samples with the
demo's (configs/digits.py), whose last step keeps alpha_bar_T = 4e-5 of the signal.

  python -m diffusion_jax.main --config=configs/digits_ztsnr.py --workdir=runs/digits_ztsnr"""
from configs.digits import get_config as get_digits_config


def get_config():
  c = get_digits_config()
  c.diffusion.zero_terminal_snr = True
  c.diffusion.prediction = "v"
  c.sample.spacing = "trailing"
  c.sample.runs = "ddim:10,ddim:50,dpm_solver++:10,unipc:10,euler_ancestral:50"
  return c

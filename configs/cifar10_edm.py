"""EDM's CIFAR-10 setup (Karras et al. 2022, Table 7 and App. F.2, config F, unconditional): the DDPM++ backbone
(128 channels x (2, 2, 2), 4 blocks per level, attention at 16x16, dropout 0.13) inside EDM's preconditioning,
sigma ~ log-normal(-1.2, 1.2) with EDM's weighting, Adam lr 1e-3 ramped up over 10 Mimg, batch 512, EMA half-life
0.5 Mimg (decay 0.5^(512 / 500000) per step), 200 Mimg (390,625 steps), sampled by EDM's Heun sampler at 18 steps
(35 NFE). Their non-leaking augmentation (p = 0.12) is not built here: this config trains without augmentation,
which Karras et al. report worsens FID on CIFAR-10 (Table 7 lists the augmentation as part of config F).
Run: python -m diffusion_jax.main --config=configs/cifar10_edm.py --workdir=runs/cifar10_edm --mode=all"""
from configs.score_sde import get_score_sde_config


def get_config():
  c = get_score_sde_config("vp")
  c.diffusion.sde = "edm"
  c.diffusion.prediction = "x0"
  c.model.update(dict(nf=128, ch_mult=(2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.13,
                      precondition="edm"))
  c.training.weighting = "edm"
  c.training.t_sampling = "lognormal_sigma"
  c.training.batch_size = 512
  # One 16 GB device: 8 microbatches of 64 (EDM's --batch-gpu=64), no recomputation. XLA's compile-only analysis
  # of this step (step_memory in benchmarks/memory.py, whose --budget_gb=16 bisects for the largest batch): 10.4 GiB
  # (0.84 arguments + 9.6 temporary); 5.8 GiB at k = 16, 13.9 GiB with model.remat=full at k = 2. On n devices use
  # k = 8 / n.
  c.training.grad_accum_steps = 8
  c.model.remat = "none"
  c.training.num_steps = 390_625
  c.training.ema_decay = 0.5 ** (512 / 500_000)
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 19_531  # 10 Mimg at batch 512
  c.optim.grad_clip = 0.0
  c.sample.runs = "edm:18,dpm_solver++:20"
  return c

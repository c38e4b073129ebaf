"""Class-conditional ImageNet 256x256 with DiT (Peebles & Xie 2023, Sec. 5): DiT-XL/2 on the 32x32x4 latents of
Stable Diffusion's KL autoencoder (f = 8, scale 0.18215), 1000 classes with label dropout 0.1, the linear schedule
T = 1000 with eps and learned variance (learn_sigma), AdamW at a constant 1e-4 without weight decay or warmup, batch
256, EMA 0.9999, 400K steps; the paper's table samples 250 DDPM steps at guidance scale 1.5 (= 1 + w). The autoencoder
comes from a converted DiT (or Stable Diffusion) release, whose vae/ is the one DiT trained on:

  python -m diffusion_jax.convert --from=diffusers --src=/path/to/DiT-XL-2-256 --dst=runs/dit_xl2
  python -m diffusion_jax.main --mode=sample --config=configs/imagenet256_dit.py --workdir=runs/dit_xl2   # released
  python -m diffusion_jax.main --config=configs/imagenet256_dit.py --workdir=runs/dit_train \\
      --config.autoencoder.workdir=runs/dit_xl2/autoencoder                                               # train it

`--config=configs/imagenet256_dit.py:B/4` selects another size of the paper (S/B/L/XL with /2, /4, /8), and `:local`
a DiT-S/2 on 64x64 images (8x8x4 latents) with small batches, to check a setup before an accelerator run. This config
computes DiT's own function (timestep frequencies unshifted, LayerNorm eps 1e-6), which trained the released weights;
the converter's config.py reproduces diffusers' port of it instead (see convert.convert_dit).
Limits: the TFDS loader holds the training images in memory as float32 (about 1 TB for ImageNet at 256x256), so
training at this scale needs a streaming loader or pre-encoded latents, which this codebase does not have yet; the
network has the 2C output channels of learn_sigma, but their variance half is not trained here (the eps half is, with
the simple loss) and the samplers use the eps half."""
from configs.base import get_base_config, model_defaults


def get_config(arg="XL/2"):
  c = get_base_config()
  local = arg == "local"
  c.data.name, c.data.tfds_name = "tfds", "imagenet2012"
  c.data.image_size, c.data.channels, c.data.center_crop = (64 if local else 256), 3, True
  c.diffusion.schedule, c.diffusion.num_timesteps, c.diffusion.prediction = "linear", 1000, "eps"
  c.model = model_defaults("dit", size="S/2" if local else arg, num_classes=1000, learn_sigma=True, latent=True)
  c.autoencoder.model.update(dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                                  norm_groups=32))
  c.training.update(dict(num_steps=400_000, batch_size=256, ema_decay=0.9999, p_uncond=0.1, checkpoint_every=10_000,
                         sample_every=50_000))
  # DiT-XL/2 on one 80 GB device: 8 microbatches of 32, no recomputation. XLA's compile-only analysis of this step
  # (step_memory in benchmarks/memory.py, whose --budget_gb=80 bisects for the largest batch): 41.5 GiB (10.1 GiB of
  # parameters, Adam moments and EMA + 31.4 GiB temporary); 70.4 GiB at k = 4; 28.6 GiB with model.remat=full at
  # k = 1. On n devices use k = 8 / n, or parallel.fsdp to split the 10.1 GiB.
  c.training.grad_accum_steps = 8
  c.model.remat = "none"
  c.optim.update(dict(optimizer="adamw", lr=1e-4, warmup_steps=0, weight_decay=0.0, grad_clip=0.0))
  c.sample.update(dict(runs="ddpm:250:w=0.5", num_samples=50_000, batch_size=256, clip_x0=False,
                       ddpm_variance="beta"))
  c.eval.features = "inception"
  if local:
    c.training.update(dict(num_steps=200, batch_size=16, checkpoint_every=100, sample_every=0, grad_accum_steps=1))
    c.sample.update(dict(runs="ddim:10:w=0.5", num_samples=16, batch_size=16))
  return c

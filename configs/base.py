"""Shared defaults for every experiment; an experiment config overrides what differs."""
import ml_collections


# The fields of config.model for each built-in network; get_model passes a network its own fields and ignores those
# of the other networks, so that --config.model.name=dit --config.model.size=S/2 switches a U-Net config to a DiT.
WRAPPER = dict(
    latent=False,         # latent diffusion: work on the latents of the autoencoder (--mode=train_autoencoder)
    dtype="float32",      # activations; "bfloat16": mixed precision (float32 parameters, norms, softmax, output)
    kernels="auto",       # how every network's layers compute: auto | xla | cpu | blocked (models/kernels)
    remat="none",         # gradient checkpointing of every network's blocks: none | full | dots (models/remat)
    precondition="",      # "" | edm: D = c_skip x + c_out F(c_in x, ln(sigma) / 4) (Karras et al. 2022; on ve / edm)
    num_classes=0,        # 0: unconditional; else labels 0..K-1 and the null label K of classifier-free guidance
    size="",              # dit / uvit: a size of the paper, e.g. S/2 (fixes depth, hidden_size, num_heads, patch_size)
)
MODEL_DEFAULTS = dict(
    unet=dict(
        block_out_channels=(32, 64),
        layers_per_block=2,
        attn_resolutions=(4,),
        num_heads=1,
        dropout=0.0,
        norm_groups=8,
        norm_eps=1e-6,
        scale_shift=False,
        flip_sin_to_cos=False,
        freq_shift=1.0,
        context_dim=0,        # > 0: cross-attention to a context sequence y [B, M, context_dim] (text-encoder states)
        transformer_depth=1,  # transformer blocks per attention level (with context_dim)
        linear_projection=False,  # linear (SD 2) instead of 1x1-conv (SD 1) projections around those blocks
        downsample_padding=0,  # 0: pad right / bottom (Ho et al.); 1: all round (Stable Diffusion)
    ),
    # Peebles & Xie 2023 (models/dit.py): S/B/L/XL with patch 2, 4, 8, or depth / hidden_size / num_heads / patch_size
    dit=dict(depth=0, hidden_size=0, num_heads=0, patch_size=0, mlp_ratio=4.0,
             learn_sigma=False,   # 2C output channels (the variance's C are not trained here; see models/dit.py)
             freq_shift=0.0, norm_eps=1e-6),
    # Bao et al. 2023 (models/uvit.py): S, S-Deep, M, L, H with patch 2, 4, 8, or the four explicit fields
    uvit=dict(depth=0, hidden_size=0, num_heads=0, patch_size=0, mlp_ratio=4.0, qkv_bias=False, mlp_time_embed=False,
              conv_out=True),
)


def model_defaults(name, **fields):
  """config.model of the built-in network `name` (unet | dit | uvit) with its defaults, updated by `fields`."""
  if name not in MODEL_DEFAULTS:
    raise ValueError(f"No defaults for model {name!r}; valid: {', '.join(MODEL_DEFAULTS)}")
  unknown = set(fields) - set(MODEL_DEFAULTS[name]) - set(WRAPPER)
  if unknown:
    raise ValueError(f"Unknown field(s) {sorted(unknown)} for model {name!r}")
  return ml_collections.ConfigDict({"name": name, **WRAPPER, **MODEL_DEFAULTS[name], **fields})


def get_base_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Modules to import before the run ("my_samplers,my_losses"), so that the samplers, weightings, networks and feature
  # extractors they register can be selected by name like the built-in ones.
  c.imports = ""

  c.data = ml_collections.ConfigDict(dict(
      name="digits",        # digits | tfds
      tfds_name="",         # for name=tfds: mnist, cifar10, celeb_a, ...
      data_dir="",
      image_size=8,
      channels=1,
      center_crop=False,
      lanes=8,              # tfds: read in this many even parts, one per slice of the global batch, so that a
                            # process loads only its slices' parts; divides the batch size (a multiple of processes)
  ))

  c.diffusion = ml_collections.ConfigDict(dict(
      schedule="linear",    # linear | scaled_linear | cosine | sigmoid | shifted_cosine[:base=64] |
                            # interpolated_cosine[:base_low=32:base_high=256] (discrete-time training; the shifted
                            # ones at the data's or the latents' resolution)
      num_timesteps=1000,   # T of the schedule; N of an SDE's discretisation
      zero_terminal_snr=False,  # rescale the schedule to alpha_bar_T = 0 (Lin et al. 2024; prediction v or x0)
      prediction="eps",     # eps | x0 | v | velocity (dx_t / dt, flow matching; on a continuous path)
      sde="",               # "" (discrete schedule) | vp | subvp | ve | edm | rectified_flow | cosine_interpolant:
                            # continuous-time training on that path (sde.py, paths.py)
      beta_min=0.1,         # vp / subvp (Song et al. 2021)
      beta_max=20.0,
      sigma_min=0.01,       # ve
      sigma_max=50.0,
  ))

  c.model = model_defaults("unet")

  # Text conditioning, on with model.context_dim > 0 (= encoder.hidden_size): y = token ids of captions of the class
  # labels, through a CLIP text encoder (transformers' CLIPTextConfig fields) in front of the U-Net.
  c.text = ml_collections.ConfigDict(dict(
      encoder=dict(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=16, hidden_act="quick_gelu", eos_token_id=3),
      train_encoder=True,    # False: frozen (e.g. Stable Diffusion's pretrained CLIP)
      tokenizer="",          # a transformers tokenizer directory; "" -> a BPE trained on the captions (text.py)
      captions=("a handwritten {word}", "the digit {digit}", "{word}", "the number {word}, written by hand",
                "a small picture of a {digit}"),   # templates per class label: {digit} -> 7, {word} -> seven
  ))

  c.training = ml_collections.ConfigDict(dict(
      num_steps=1000,
      batch_size=128,
      grad_accum_steps=1,    # k microbatches per global batch, gradients summed in the one jitted step (train.py)
      weighting="uniform",   # uniform | p2 | min_snr | likelihood | edm | sigmoid | "module:function" (losses.py)
      p2_gamma=1.0,          # p2: 1 / (k + SNR)^gamma (Choi et al. 2022)
      p2_k=1.0,
      min_snr_gamma=5.0,     # min_snr: min(SNR, gamma) on the x0 loss (Hang et al. 2023)
      sigma_data=0.5,        # edm: the data's standard deviation in its weighting (Karras et al. 2022)
      sigmoid_bias=0.0,      # sigmoid: b of w(lambda) = sigmoid(b - lambda) (Kingma & Gao 2023)
      t_sampling="uniform",  # uniform | importance (t ~ weighting, Song et al. 2021b) | logit_normal | mode |
                             # lognormal_sigma (timesteps.py; these three on a continuous path, diffusion.sde)
      logit_normal_m=0.0,    # logit_normal: t = sigmoid(m + s n) (Esser et al. 2024)
      logit_normal_s=1.0,
      mode_scale=1.29,       # mode: the scale s of Esser et al. 2024, eq. 20
      p_mean=-1.2,           # lognormal_sigma: ln(sigma_t / alpha_t) ~ N(p_mean, p_std^2) (Karras et al. 2022)
      p_std=1.2,
      loss_bins=8,           # log-SNR bins of the logged per-noise-level loss
      p_uncond=0.0,          # label dropout to the null label (classifier-free guidance; Ho & Salimans use 0.1-0.2)
      ema_decay=0.9999,
      log_every=50,
      checkpoint_every=500,
      sample_every=0,        # 0: only at the end
      keep_checkpoints=2,
  ))

  c.optim = ml_collections.ConfigDict(dict(
      optimizer="adam",      # adam | adamw
      lr=2e-4,
      warmup_steps=0,
      decay_steps=0,         # > 0: cosine decay from lr to 0 at this step, after the warmup (0: constant)
      grad_clip=1.0,
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
  ))

  c.sample = ml_collections.ConfigDict(dict(
      runs="ddpm:1000,ddim:10,ddim:20,ddim:50,ddim:100",   # name:num_steps[:key=value...], e.g. ode:20:solver=heun
      num_samples=1000,
      classes="",            # labels to sample, cycled: "" = every class, "3" or "0,5,7"
      batch_size=500,
      spacing="leading",     # leading | trailing | linspace
      clip_x0=True,
      ddpm_variance="beta_tilde",   # beta | beta_tilde
      use_ema=True,
      prompt="",             # text models: one prompt, or a template with {digit} / {word} filled per sampled class
                             # ("" -> text.captions[0])
  ))

  # The noise-conditional classifier of classifier guidance (--mode=train_classifier), trained on x_t of the same
  # diffusion process; ADM's classifier settings (Dhariwal & Nichol 2021, App. C) scaled down to the digits.
  c.classifier = ml_collections.ConfigDict(dict(
      workdir="",            # "" -> <workdir>/classifier
      model=dict(num_classes=10, block_out_channels=(32, 64), layers_per_block=1, attn_resolutions=(4,),
                 num_heads=1, norm_groups=8, dropout=0.0),
      training=dict(num_steps=1500, batch_size=128, ema_decay=0.999, log_every=50, checkpoint_every=500,
                    eval_every=500, keep_checkpoints=2),
      optim=dict(optimizer="adamw", lr=6e-4, warmup_steps=0, grad_clip=1.0, weight_decay=0.05, b1=0.9, b2=0.999,
                 eps=1e-8),
  ))

  # The KL autoencoder of latent diffusion (--mode=train_autoencoder; Rombach et al. 2022), diffusers' AutoencoderKL
  # layout; downsampling f = 2^(levels - 1). kl_weight as in LDM's KL-regularised models.
  c.autoencoder = ml_collections.ConfigDict(dict(
      workdir="",            # "" -> <workdir>/autoencoder
      model=dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_groups=8),
      loss=dict(reconstruction="l1", kl_weight=1e-6),   # l1 | l2, summed per image
      training=dict(num_steps=2000, batch_size=64, ema_decay=0.999, log_every=50, checkpoint_every=500,
                    keep_checkpoints=2),
      optim=dict(optimizer="adam", lr=1e-3, warmup_steps=100, grad_clip=1.0, weight_decay=0.0, b1=0.9, b2=0.999,
                 eps=1e-8),
      scale_num_images=1024,  # training images encoded to measure the latent scale factor 1 / std(z)
  ))

  # Devices of every process form a (data, fsdp) mesh (parallel.py): the batch is split over both axes; fsdp > 1
  # also splits the parameters, EMA and optimizer state over `fsdp` devices. fsdp must divide the device count.
  c.parallel = ml_collections.ConfigDict(dict(fsdp=1))

  # Losing no work (preemption.py, workdir_lock.py): SIGTERM / SIGINT stop training after the step in progress,
  # checkpoint it and exit with status 75 within grace_s seconds (set it below the scheduler's notice; 0: signals
  # keep their default effect); one run per workdir, a lock not refreshed (every minute) for lock_stale_s seconds is
  # taken over.
  c.job = ml_collections.ConfigDict(dict(grace_s=25.0, lock_stale_s=300.0))

  c.eval = ml_collections.ConfigDict(dict(
      features="inception",   # inception | digits | dinov2 | clip, or a comma list (inception,dinov2): the
                              # networks behind FID / sFID / IS, FD_DINOv2, FD_CLIP / CMMD, in one pass (features.py)
      inception_weights="",   # pytorch-fid's pt_inception-2015-12-05-6726825d.pth (.pth / .npz / .msgpack);
                              # "" -> the FID_INCEPTION_WEIGHTS environment variable
      sfid=False,             # with inception: also sFID on mixed_6/conv (its reference needs the training images)
      dinov2_weights="",      # a facebook/dinov2-large directory (config.json + model.safetensors) or its .msgpack
      clip_weights="",        # a CLIP directory, e.g. openai/clip-vit-large-patch14-336 (CMMD's encoder)
      clip_score=False,       # with clip in features and a text model: CLIPScore of each sample against its prompt
      reference_stats="",     # mu / sigma .npz (pytorch-fid format, published files work); computed from the
                              # training split and cached there if missing; "" -> CACHE_DIR/reference_stats_*.npz
      reference_num_images=0,  # training images behind computed reference statistics (0: all)
      batch_size=50,          # images per feature-extraction batch
      cache_dir="",           # where the digits classifier and reference statistics are cached; "" -> WORKDIR
      classifier_steps=600,   # training steps of the digits evaluation classifier (features="digits")
      enable_bpd=False,       # bits/dim of held-out images through the probability-flow ODE (diffusion.sde or vp)
      bpd_num_images=100,
      bpd_num_bins=256,       # pixel levels of the data (17 for the digits: values 0..16)
      bpd_probe="rademacher",  # rademacher | gaussian (Hutchinson) | exact
  ))
  return c

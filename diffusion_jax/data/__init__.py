"""Datasets by name: the embedded scikit-learn digits and TFDS image datasets, as deterministic global-batch streams."""
from diffusion_jax.data.base import DATASETS, get_dataset  # noqa: F401
from diffusion_jax.data import digits, tfds_data  # noqa: F401  (registers the datasets)

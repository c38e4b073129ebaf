import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.losses import diffusion_loss, target, to_eps_x0
from diffusion_jax.schedules import get_schedule


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_target_and_inverse(prediction):
  rng = np.random.default_rng(0)
  x0, eps = rng.standard_normal((2, 5, 3))
  alpha = np.sqrt(0.3)
  sigma = np.sqrt(0.7)
  x_t = alpha * x0 + sigma * eps
  e, x = to_eps_x0(target(x0, eps, alpha, sigma, prediction), x_t, alpha, sigma, prediction)
  np.testing.assert_allclose(e, eps, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(x, x0, rtol=1e-6, atol=1e-6)


def test_v_definition():
  v = target(np.array(2.0), np.array(3.0), 0.6, 0.8, "v")
  assert v == pytest.approx(0.6 * 3.0 - 0.8 * 2.0)  # v = alpha eps - sigma x0


def test_bad_prediction_name():
  with pytest.raises(ValueError, match="eps, x0, v"):
    target(1.0, 1.0, 0.5, 0.5, "score")


def test_diffusion_loss_of_exact_eps_model_is_zero():
  """A model that returns the true noise (recovered from x_t and x0) has zero loss; a zero model has loss ~ 1."""
  sched = get_schedule("linear", 1000)
  x0 = jax.random.normal(jax.random.PRNGKey(0), (64, 4, 4, 1))

  def oracle(variables, x_t, index, y, train, rngs):
    alpha, sigma = sched.alpha_sigma(sched.index_to_t(index))
    return (x_t - alpha[:, None, None, None] * x0) / sigma[:, None, None, None]

  loss, aux = diffusion_loss(oracle, {}, sched, x0, None, jax.random.PRNGKey(1), prediction="eps", weighting="uniform")
  assert float(loss) < 1e-6 and aux["per_example"].shape == (64,)
  zero = lambda variables, x_t, *a, **k: jnp.zeros_like(x_t)
  loss, _ = diffusion_loss(zero, {}, sched, x0, None, jax.random.PRNGKey(1), prediction="eps", weighting="uniform")
  assert 0.8 < float(loss) < 1.2

"""Text conditioning: the captions and their tokenizer, caption dropout to the empty prompt, and the frozen encoder."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from diffusion_jax import build, text
from diffusion_jax.guidance import drop_labels

TEXT = {"model.context_dim": 16, "model.num_heads": 2,
        "text.encoder": dict(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, max_position_embeddings=12, eos_token_id=3)}


def test_captions_tokenize_round_trip_and_null_is_the_empty_prompt():
  c = tiny_config(**TEXT)
  t = text.get_text(c)
  assert text.caption("the number {word}, {digit}", 7) == "the number seven, 7"
  ids = t.caption_ids
  assert ids.shape == (10, len(c.text.captions), 12) and ids.dtype == np.int32
  for label, k in ((0, 0), (7, 2), (9, 4)):
    decoded = t.tokenizer.decode(ids[label, k], skip_special_tokens=True).replace(" ,", ",")
    assert decoded == text.caption(c.text.captions[k], label)
  np.testing.assert_array_equal(t.null[:3], [2, 3, 0])  # <|startoftext|> <|endoftext|> <|pad|> ...
  assert not np.any(t.null[3:])
  # a tokenizer retrained from the same captions is the same (the checkpoint's ids stay valid)
  retrained = text.train_tokenizer([text.caption(p, d) for p in c.text.captions for d in range(10)], 96)
  assert retrained.get_vocab() == t.tokenizer.get_vocab()
  with pytest.raises(ValueError, match="more than text.encoder.vocab_size=20"):
    text.get_text(tiny_config(**{**TEXT, "text.encoder": {**TEXT["text.encoder"], "vocab_size": 20}}))
  with pytest.raises(FileNotFoundError, match="text.tokenizer"):
    text.get_text(tiny_config(**{**TEXT, "text.tokenizer": "/no/such/tokenizer"}))


def test_training_captions_do_not_depend_on_the_process_count():
  """Each example's template is drawn from (seed, step, row of the global batch): two halves make the whole."""
  t = text.get_text(tiny_config(**TEXT))
  labels = np.arange(16) % 10
  whole = t.training_ids(labels, 0, 5, 16)
  halves = [t.training_ids(labels[s], 0, 5, 16, s) for s in (slice(0, 8), slice(8, 16))]
  np.testing.assert_array_equal(np.concatenate(halves), whole)
  assert len({tuple(r) for r in t.training_ids(np.zeros(16, int), 0, 5, 16)}) > 1  # several templates in a batch


def test_caption_dropout_swaps_whole_rows_for_the_empty_prompt():
  c = tiny_config(**TEXT)
  null = text.null_condition(c)
  ids = jnp.asarray(text.get_text(c).caption_ids[:, 0])
  dropped = np.asarray(drop_labels(jax.random.PRNGKey(0), jnp.tile(ids, (20, 1)), 0.5, null))
  kept = (dropped == np.tile(ids, (20, 1))).all(1)
  assert 50 < kept.sum() < 150 and (dropped[~kept] == null).all()


@pytest.mark.parametrize("train_encoder", [True, False])
def test_frozen_text_encoder_is_not_updated(train_encoder):
  """With text.train_encoder=False the optimizer leaves the encoder's weights alone, even AdamW's weight decay."""
  c = tiny_config(**{**TEXT, "text.train_encoder": train_encoder, "optim.optimizer": "adamw",
                     "optim.weight_decay": 0.1, "optim.warmup_steps": 0})
  params = {"text_encoder": {"w": jnp.ones(3)}, "unet": {"w": jnp.ones(3)}}
  tx = build.model_optimizer(c)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  assert float(jnp.abs(updates["unet"]["w"]).min()) > 0
  assert (float(jnp.abs(updates["text_encoder"]["w"]).min()) > 0) == train_encoder


def test_checkpoint_compatibility_covers_the_text_encoder():
  import json
  from diffusion_jax import checkpoint
  c = tiny_config(**TEXT)
  saved = json.loads(c.to_json())
  checkpoint.check_compatible(saved, c)
  deeper = tiny_config(**{**TEXT, "text.encoder": {**TEXT["text.encoder"], "num_hidden_layers": 2}})
  with pytest.raises(ValueError, match="text.encoder.num_hidden_layers: checkpoint has 1, config has 2"):
    checkpoint.check_compatible(saved, deeper)
  plain = tiny_config(**{"text.encoder": {**TEXT["text.encoder"], "num_hidden_layers": 5}})
  checkpoint.check_compatible(json.loads(tiny_config().to_json()), plain)  # unused by a model without text

"""The Flax CLIP text transformer against transformers' CLIPTextModel (PyTorch, CPU) with the same random weights:
hidden states and pooled output to 1e-4, loaded from a saved directory; bad inputs named."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.models import clip_text

TINY = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, layer_norm_eps=1e-5)


def torch_model(eos_token_id, hidden_act):
  import torch
  from transformers import CLIPTextConfig, CLIPTextModel
  torch.manual_seed(0)
  model = CLIPTextModel(CLIPTextConfig(**TINY, hidden_act=hidden_act, eos_token_id=eos_token_id,
                                       bos_token_id=0, pad_token_id=1)).eval()
  with torch.no_grad():  # every weight away from its initial value (LayerNorms start at 1 / 0)
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


def ids_and_mask(eos_token_id):
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 98, (3, 12))
  ids[0, 5], ids[1, 11], ids[2, 7] = eos_token_id, eos_token_id, eos_token_id  # end of text
  mask = np.ones_like(ids)
  mask[2, 8:] = 0  # padding after the end of the third prompt
  return ids, mask


@pytest.mark.parametrize("eos_token_id,hidden_act", [(98, "quick_gelu"), (2, "gelu")])
def test_matches_transformers(tmp_path, eos_token_id, hidden_act):
  import torch
  model = torch_model(eos_token_id, hidden_act)
  model.save_pretrained(tmp_path)  # config.json + model.safetensors, read back by name
  config, params = clip_text.load_pretrained(str(tmp_path))
  assert config.hidden_act == hidden_act and config.eos_token_id == eos_token_id
  ids, mask = ids_and_mask(eos_token_id)
  if eos_token_id == 2:  # old configs pool at the largest id: make it the end-of-text token
    ids = np.where(ids == 2, 98, np.minimum(ids, 97))
  for m in (None, mask):
    with torch.no_grad():
      ref = model(torch.from_numpy(ids), attention_mask=None if m is None else torch.from_numpy(m))
    hidden, pooled = clip_text.CLIPTextModel(config).apply({"params": params}, jnp.asarray(ids),
                                                           None if m is None else jnp.asarray(m))
    np.testing.assert_allclose(hidden, ref.last_hidden_state.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pooled, ref.pooler_output.numpy(), rtol=1e-4, atol=1e-4)


def test_bad_inputs(tmp_path):
  model = torch_model(98, "quick_gelu")
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  config = clip_text.CLIPTextConfig.from_dict(model.config.to_dict())
  missing = {k: v for k, v in state.items() if "layers.1.mlp.fc2" not in k}
  with pytest.raises(ValueError, match=r"missing 2 key\(s\) \['encoder.layers.1.mlp.fc2.bias', "
                                       r"'encoder.layers.1.mlp.fc2.weight'\]"):
    clip_text.convert_params(missing, config)
  with pytest.raises(ValueError, match=r"Parameter encoder.layers.0.self_attn.q_proj.weight: checkpoint shape "
                                       r"\(16, 32\)"):
    clip_text.convert_params({**state, "encoder.layers.0.self_attn.q_proj.weight": np.zeros((16, 32))}, config)
  with pytest.raises(ValueError, match="17 tokens exceed the text encoder's context of 16"):
    params = clip_text.convert_params(state, config)
    clip_text.CLIPTextModel(config).apply({"params": params}, jnp.zeros((1, 17), jnp.int32))
  with pytest.raises(ValueError, match="Unsupported hidden_act 'relu'"):
    clip_text.CLIPTextConfig.from_dict({"hidden_act": "relu"})
  (tmp_path / "config.json").write_text(json.dumps(TINY))
  with pytest.raises(FileNotFoundError, match="model.safetensors not found"):
    clip_text.load_pretrained(str(tmp_path))


def test_tokenize_pads_and_truncates_with_a_warning(caplog):
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast
  words = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "handwritten", "seven", "digit", "thick", "strokes"]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 1),
                                                                                               ("<eos>", 2)])
  tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                      unk_token="<unk>")
  ids, mask = clip_text.tokenize(tokenizer, ["a handwritten seven", "a digit"], 6)
  np.testing.assert_array_equal(ids, [[1, 4, 5, 6, 2, 0], [1, 4, 7, 2, 0, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
  assert "truncated" not in caplog.text
  ids, _ = clip_text.tokenize(tokenizer, ["a handwritten seven digit thick strokes"], 6)
  assert ids.shape == (1, 6) and ids[0, -1] == 2  # still ends with the end-of-text token
  assert "1 prompt(s) exceed the text encoder's context of 6 tokens and are truncated" in caplog.text

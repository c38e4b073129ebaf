"""Text conditioning (`model.context_dim > 0`): captions of the class labels, the tokenizer (a BPE trained on those
captions with `tokenizers`, or a transformers tokenizer from a directory such as Stable Diffusion's), and the token-id
rows y a text-conditioned model takes; the null condition of classifier-free guidance is the empty prompt's ids."""
import dataclasses
import functools
import os

import numpy as np

from diffusion_jax.models.clip_text import tokenize

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PAD, UNK, BOS, EOS = "<|pad|>", "<|unk|>", "<|startoftext|>", "<|endoftext|>"  # ids 0..3 of a trained tokenizer


def is_text(config):
  return bool(config.model.get("context_dim", 0))


def caption(template, label):
  """A caption of class `label`: the template with {digit} -> "7" and {word} -> "seven"."""
  return template.format(digit=label, word=DIGIT_WORDS[label])


def train_tokenizer(corpus, vocab_size):
  """A lower-casing BPE tokenizer (Sennrich et al. 2016) trained on `corpus` with at most vocab_size tokens, wrapped
  as a transformers tokenizer that frames each text as <|startoftext|> ... <|endoftext|> (CLIP's convention)."""
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE(unk_token=UNK))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK, BOS, EOS],
                                                      show_progress=False))
  tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, 2), (EOS, 3)])
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS)


def load_tokenizer(directory):
  from transformers import AutoTokenizer
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"Tokenizer directory {directory} (text.tokenizer) not found: it holds a transformers "
                            "tokenizer, e.g. the tokenizer/ folder of a Stable Diffusion directory, or set "
                            "text.tokenizer='' to train one on the captions")
  return AutoTokenizer.from_pretrained(directory)


@dataclasses.dataclass(frozen=True)
class Text:
  """A tokenizer, the caption templates of the class labels, and the encoder's context length."""
  tokenizer: object
  templates: tuple
  num_classes: int
  max_length: int

  def ids(self, prompts):
    """Token ids int32 [B, max_length] of prompts (padded; truncated with a warning)."""
    return tokenize(self.tokenizer, prompts, self.max_length)[0]

  @functools.cached_property
  def null(self):
    """The empty prompt's ids [max_length]: the unconditional input of classifier-free guidance."""
    return self.ids([""])[0]

  @functools.cached_property
  def caption_ids(self):
    """Ids of every caption [num_classes, num_templates, max_length]."""
    k = self.num_classes
    return self.ids([caption(t, c) for c in range(k) for t in self.templates]).reshape(k, len(self.templates), -1)

  def training_ids(self, labels, seed, step, batch_size, rows=slice(None)):
    """Caption ids of rows `rows` of a global training batch: each example's template is drawn from (seed, step),
    so the batch is the same whatever the number of processes."""
    choice = np.random.default_rng([seed, step, 7]).integers(len(self.templates), size=batch_size)[rows]
    return self.caption_ids[labels, choice]

  def prompts(self, prompt, labels, num):
    """The prompt of each of `num` samples: `prompt` with {digit} / {word} filled from the labels (the first caption
    template when prompt is ""), or one fixed prompt."""
    if labels is None:
      return [prompt] * num
    return [caption(prompt or self.templates[0], int(c)) for c in labels]

  def prompt_ids(self, prompt, labels, num):
    """Ids of the prompts of `num` samples (prompts)."""
    return self.ids(self.prompts(prompt, labels, num))


@functools.lru_cache(maxsize=4)
def _text(tokenizer_dir, templates, num_classes, vocab_size, max_length):
  if tokenizer_dir:
    tokenizer = load_tokenizer(tokenizer_dir)
  else:
    if not (templates and num_classes):
      raise ValueError("A text model without text.tokenizer trains a tokenizer on the captions of the class labels: "
                       "set text.captions and model.num_classes, or point text.tokenizer at a tokenizer directory")
    if num_classes > len(DIGIT_WORDS):
      raise ValueError(f"Captions name the digits 0..9 (DIGIT_WORDS); model.num_classes={num_classes} is larger")
    tokenizer = train_tokenizer([caption(t, c) for t in templates for c in range(num_classes)], vocab_size)
  if len(tokenizer) > vocab_size:
    raise ValueError(f"The tokenizer has {len(tokenizer)} tokens, more than text.encoder.vocab_size={vocab_size}")
  return Text(tokenizer, templates, num_classes, max_length)


def get_text(config):
  """The Text of a text-conditioned config (cached: a tokenizer trained on the captions is deterministic)."""
  enc = config.text.encoder
  return _text(config.text.tokenizer, tuple(config.text.captions), config.model.num_classes, enc.vocab_size,
               enc.max_position_embeddings)


def null_condition(config):
  """The null condition of label dropout and classifier-free guidance: the null label num_classes, or for a text
  model the empty prompt's ids."""
  return get_text(config).null if is_text(config) else config.model.num_classes


def fixed_prompt(config):
  """Whether a text model samples one fixed prompt (sample.prompt without {digit} / {word}): no class labels then."""
  return is_text(config) and bool(config.sample.prompt) and "{" not in config.sample.prompt


def sample_conditions(config, labels, num):
  """The model input y of `num` samples with class labels `labels` (or None): the labels themselves, or for a text
  model the ids of their prompts (config.sample.prompt)."""
  if not is_text(config):
    return labels
  return get_text(config).prompt_ids(config.sample.prompt, labels, num)

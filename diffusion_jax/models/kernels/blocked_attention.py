"""Attention in tiles with a memory-light custom VJP: never the whole [N, N] score matrix of every head at once, in
the spirit of FlashAttention (Dao et al. 2022) but in plain JAX. The cpu set's attention for long sequences, and the
`blocked` set's attention for long sequences on accelerators whose fused kernels do not apply."""
import functools
import math

import jax
import jax.numpy as jnp

F32 = jnp.float32
CPU_TILE = 2 ** 19  # scores per step: 2 MB of float32, which stays in a CPU's cache
ACCELERATOR_TILE = 2 ** 26  # 256 MB: few large steps keep an accelerator busy (one for the attention of most U-Nets)


def _divisor(n, at_most):
  """The largest divisor of n that is at most max(at_most, 1)."""
  return next(k for k in range(min(max(at_most, 1), n), 0, -1) if n % k == 0)


def _tiles(r, nq, nk, tile):
  """(rows per chunk, queries per block) so that one step's scores [rows, queries, nk] hold about `tile` entries on
  each device: when the rows split evenly over the devices (a batch sharded over them), a chunk takes the same number
  of rows from each device's share (_chunks), so every device loops over its own rows."""
  d = jax.device_count()
  d = d if r % d == 0 else 1
  if nq * nk >= tile:
    return d, _divisor(nq, tile // nk)
  return d * _divisor(r // d, tile // (nq * nk)), nq


def _chunks(a, c):  # [R, ...] -> [R / c, c, ...]; chunk j holds rows j, j + R / c, ..., evenly from each device's share
  return a.reshape(c, a.shape[0] // c, *a.shape[1:]).swapaxes(0, 1)


def _unchunk(a):  # [R / c, c, ...] -> [R, ...]
  a = a.swapaxes(0, 1)
  return a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])


def _query_blocks(a, bq):  # [c, n, ...] -> [n / bq, c, bq, ...]
  return a.reshape(a.shape[0], a.shape[1] // bq, bq, *a.shape[2:]).swapaxes(0, 1)


def _unblock(a):  # [n / bq, c, bq, ...] -> [c, n, ...]
  a = a.swapaxes(0, 1)
  return a.reshape(a.shape[0], a.shape[1] * a.shape[2], *a.shape[3:])


def heads_as_rows(attend, q, k, v):
  """attend([B H, Nq, D], [B H, Nk, D], ...) applied to q [B, Nq, H, D], k, v [B, Nk, H, D]; returns [B, Nq, H, D]."""
  rows = lambda a: a.swapaxes(1, 2).reshape(-1, a.shape[1], a.shape[-1])
  o = attend(rows(q), rows(k), rows(v))
  return o.reshape(q.shape[0], q.shape[2], q.shape[1], -1).swapaxes(1, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def blocked_attention(q, k, v, tile):
  """softmax(q k^T / sqrt(d)) v for q [R, Nq, D] and k, v [R, Nk, D] (R = batch * heads), in steps of a few rows and a
  block of queries (_tiles) of about `tile` scores, so that the scores of a step fit in cache (or in memory) whatever
  the number of heads. Scores, softmax and sums are float32 whatever the dtype of q, k, v."""
  return _attn_fwd(q, k, v, tile)[0]


def row_max(s, width=32):
  """jnp.max(s, axis=-1, keepdims=True) as elementwise maxima of the `width`-wide column slices of s, then a max over
  `width` columns, which XLA's CPU backend computes far faster than a long reduce-window."""
  n = s.shape[-1]
  if n <= width or n % width:
    return jnp.max(s, axis=-1, keepdims=True)
  return jnp.max(functools.reduce(jnp.maximum, [s[..., j:j + width] for j in range(0, n, width)]), -1, keepdims=True)


def _attn_fwd(q, k, v, tile):
  r, n, d = q.shape
  c, bq = _tiles(r, n, k.shape[1], tile)
  scale = 1.0 / math.sqrt(d)

  def chunk(x):
    qc, kc, vc = x  # [c, n, d]
    v1 = jnp.concatenate([vc, jnp.ones(vc.shape[:-1] + (1,), vc.dtype)], axis=-1)  # [c, n, d + 1]

    def block(qi):  # [c, bq, d]
      s = jnp.einsum("rqd,rkd->rqk", qi, kc, preferred_element_type=F32) * scale
      m = row_max(s)
      p = jnp.exp(s - m)
      o = jnp.einsum("rqk,rkd->rqd", p.astype(vc.dtype), v1, preferred_element_type=F32)
      total = o[..., d:]  # the row sums of p, from the ones column: one pass over p fewer
      return o[..., :d] / total, (m + jnp.log(total))[..., 0]

    out, lse = jax.lax.map(block, _query_blocks(qc, bq))
    return _unblock(out), _unblock(lse)

  out, lse = jax.lax.map(chunk, (_chunks(q, c), _chunks(k, c), _chunks(v, c)))
  out, lse = _unchunk(out), _unchunk(lse)  # float32: the backward's delta needs the unrounded output
  return out.astype(q.dtype), (q, k, v, out, lse)


def _attn_bwd(tile, res, dout):
  q, k, v, out, lse = res
  r, n, d = q.shape
  c, bq = _tiles(r, n, k.shape[1], tile)
  scale = 1.0 / math.sqrt(d)
  delta = jnp.sum(dout.astype(F32) * out, axis=-1)  # [R, N]; out is float32
  dot = functools.partial(jnp.einsum, preferred_element_type=F32)

  def chunk(x):
    qc, kc, vc, doc, lsec, deltac = x

    def block(carry, xs):  # dk, dv accumulate transposed ([c, d, n]): XLA's CPU dots are faster that way
      dk_t, dv_t = carry
      qi, doi, lsei, deltai = xs
      p = jnp.exp(dot("rqd,rkd->rqk", qi, kc) * scale - lsei[..., None])
      dv_t = dv_t + dot("rqd,rqk->rdk", doi, p.astype(doi.dtype))
      ds = p * (dot("rqd,rkd->rqk", doi, vc) - deltai[..., None]) * scale
      dk_t = dk_t + dot("rqd,rqk->rdk", qi, ds.astype(qi.dtype))
      return (dk_t, dv_t), dot("rqk,rkd->rqd", ds.astype(kc.dtype), kc)

    zeros = jnp.zeros(kc.shape[:1] + kc.shape[:0:-1], F32)
    (dk_t, dv_t), dq = jax.lax.scan(block, (zeros, zeros), tuple(_query_blocks(a, bq) for a in (qc, doc, lsec, deltac)))
    return _unblock(dq), dk_t, dv_t  # transposed back outside the loops, where XLA cannot fold it into the dots

  dq, dk_t, dv_t = jax.lax.map(chunk, tuple(_chunks(a, c) for a in (q, k, v, dout, lse, delta)))
  return (_unchunk(dq).astype(q.dtype), _unchunk(dk_t).swapaxes(1, 2).astype(k.dtype),
          _unchunk(dv_t).swapaxes(1, 2).astype(v.dtype))


blocked_attention.defvjp(_attn_fwd, _attn_bwd)


def attention(q, k, v):
  """blocked_attention of each head, in tiles sized for an accelerator's memory, for q [B, Nq, H, D] and k, v
  [B, Nk, H, D]."""
  return heads_as_rows(lambda *a: blocked_attention(*a, ACCELERATOR_TILE), q, k, v)

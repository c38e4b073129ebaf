"""One run per workdir: `WORKDIR/run.lock` (JSON: host, pid, start time, mode), created atomically and refreshed by
a heartbeat while the run lives. A second run on the workdir refuses, naming the holder; a stale lock (its process
gone on this host, or not refreshed for `stale_s` seconds) is taken over with a warning. A multi-process job takes
one lock, in process 0, and every process learns the outcome."""
import contextlib
import datetime
import json
import os
import socket
import threading
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

NAME = "run.lock"


class WorkdirLocked(RuntimeError):
  """Another live run holds the workdir."""


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


def _holder(path):
  """(the lock's JSON, seconds since its last heartbeat); (None, age) while it is being written or when it is not a
  lock this module wrote; FileNotFoundError when there is none."""
  age = time.time() - os.path.getmtime(path)
  try:
    with open(path) as f:
      holder = json.load(f)
  except ValueError:
    return None, age
  ok = isinstance(holder, dict) and isinstance(holder.get("pid"), int) and holder["pid"] > 0 and "host" in holder
  return (holder if ok else None), age


def stale_reason(holder, age, stale_s):
  """Why a lock may be taken over, or None while its run may still be alive."""
  if age > stale_s:
    return f"not refreshed for {age:.0f} s (job.lock_stale_s = {stale_s:.0f})"
  if holder is None:
    return "unreadable" if age > 10 else None  # a lock younger than that may still be being written
  if holder.get("host") == socket.gethostname():
    if holder.get("pid") == os.getpid():
      return "left by an earlier process with this pid (a restarted container)"
    if not _alive(holder["pid"]):
      return f"its process {holder.get('pid')} is gone"
  return None


def acquire(workdir, stale_s, mode=""):
  """Creates WORKDIR/run.lock for this process, taking over a stale one; WorkdirLocked when a live run holds it.
  Returns the lock's JSON."""
  path = os.path.join(workdir, NAME)
  mine = dict(host=socket.gethostname(), pid=os.getpid(), started=datetime.datetime.now().isoformat(timespec="seconds"),
              mode=mode)
  while True:
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        holder, age = _holder(path)
      except FileNotFoundError:  # released meanwhile
        continue
      reason = stale_reason(holder, age, stale_s)
      if reason is None:
        who = (f"pid {holder['pid']} on {holder['host']} (mode {holder.get('mode') or '?'}, started "
               f"{holder.get('started', '?')})") if holder else "a run that is starting"
        raise WorkdirLocked(f"{workdir} is in use by {who}; wait for it to end or stop it (its lock, {path}, is "
                            f"taken over once that process is gone or after job.lock_stale_s = {stale_s:.0f} s "
                            "without a heartbeat)") from None
      _take_over(path, holder, reason)
      continue
    with os.fdopen(fd, "w") as f:
      json.dump(mine, f)
    return mine


def _take_over(path, holder, reason):
  """Removes the stale lock `holder` judged stale; if another run replaced it meanwhile, puts that one back."""
  moved = f"{path}.stale-{os.getpid()}"
  try:
    os.rename(path, moved)
  except FileNotFoundError:
    return
  try:
    taken, _ = _holder(moved)
  except FileNotFoundError:
    return
  if taken != holder:  # a live run's fresh lock: restore it (link fails if yet another run created one)
    try:
      os.link(moved, path)
    except FileExistsError:
      pass
  else:
    logging.warning("Took over the stale lock %s (%s): %s", path, reason, holder)
  os.remove(moved)


def release(workdir, mine):
  """Removes the lock if it is still this run's."""
  path = os.path.join(workdir, NAME)
  try:
    if _holder(path)[0] == mine:
      os.remove(path)
  except FileNotFoundError:
    pass


@contextlib.contextmanager
def hold(workdir, stale_s, mode=""):
  """Holds WORKDIR/run.lock for the block (process 0 of a job), touching it every min(60, stale_s / 4) s."""
  mine, error = None, None
  if jax.process_index() == 0:
    try:
      mine = acquire(workdir, stale_s, mode)
    except Exception as e:  # any failure: the other processes must learn it, not wait in the broadcast
      error = e
  if jax.process_count() > 1:  # every process refuses together
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not ok and error is None:
      error = WorkdirLocked(f"{workdir} is in use by another run (process 0 could not take its lock)")
  if error is not None:
    raise error
  stop = threading.Event()

  def heartbeat():
    while not stop.wait(min(60.0, stale_s / 4)):
      with contextlib.suppress(OSError):
        os.utime(os.path.join(workdir, NAME))
  beat = threading.Thread(target=heartbeat, daemon=True)
  if mine:
    beat.start()
  try:
    yield
  finally:
    stop.set()
    if mine:
      release(workdir, mine)

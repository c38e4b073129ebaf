"""Stopping a training run cleanly on SIGTERM (TPU VM maintenance, SLURM preemption, Kubernetes) or SIGINT (Ctrl-C):
the loop finishes the step in progress, every process stops after the same step, the state is checkpointed, and the
process exits with EXIT_CODE. A run resumed afterwards gives the parameters of an uninterrupted one."""
import os
import signal
import threading

from absl import logging

EXIT_CODE = 75  # sysexits' EX_TEMPFAIL: stopped on request with its state saved; run the same command to resume
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Raised by the training loop after it stopped on a signal and saved its checkpoint."""


class StopRequests:
  """While active (a context manager), SIGTERM and SIGINT set `requested` instead of ending the process, and start
  a watchdog that ends it with status 128 + signal if the checkpoint is not written within grace_s seconds (before
  the scheduler's SIGKILL). A second SIGINT raises KeyboardInterrupt at once. Handlers can only be installed in the
  main thread; elsewhere (and with grace_s <= 0) signals keep their default behaviour."""

  def __init__(self, grace_s):
    self.grace_s = grace_s
    self.signal = None
    self._previous = {}
    self._watchdog = None

  @property
  def requested(self):
    return self.signal is not None

  def _handle(self, signum, frame):
    if self.signal == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    if self.signal is None:
      self.signal = signum
      logging.warning("Received %s: stopping after this step and saving a checkpoint (at most %.0f s)",
                      signal.Signals(signum).name, self.grace_s)
      self._watchdog = threading.Timer(self.grace_s, self._expire, args=(signum,))
      self._watchdog.daemon = True
      self._watchdog.start()

  def _expire(self, signum):
    logging.error("The checkpoint was not written within the %.0f s grace period; exiting without it", self.grace_s)
    os._exit(128 + signum)

  def __enter__(self):
    if self.grace_s > 0 and threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    return self

  def __exit__(self, *exc):  # the checkpoint is written: the watchdog has done its job
    if self._watchdog is not None:
      self._watchdog.cancel()
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

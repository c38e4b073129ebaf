"""Stopping a training run cleanly on SIGTERM (TPU VM maintenance, SLURM preemption, Kubernetes) or SIGINT (Ctrl-C):
the loop finishes the step in progress and the next one, every process stops after the same step, the state is
checkpointed, and the process exits with EXIT_CODE. A run resumed afterwards gives the parameters of an uninterrupted
one."""
import os
import signal
import threading

from absl import logging

EXIT_CODE = 75  # sysexits' EX_TEMPFAIL: stopped on request with its state saved; run the same command to resume
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Raised by the training loop after it stopped on a signal and saved its checkpoint."""


class StopRequests:
  """While active (a context manager), SIGTERM and SIGINT set `requested` instead of ending the process, and arm a
  watchdog that ends it with status 128 + signal if the checkpoint is not written within grace_s seconds (before the
  scheduler's SIGKILL). The signal is read by a thread from signal.set_wakeup_fd, so the watchdog is armed even while
  the main thread waits inside XLA or a collective. A SIGINT after the first signal raises KeyboardInterrupt in the
  main thread. Handlers are installed only from the main thread; elsewhere (and with grace_s <= 0) signals keep
  their default behaviour."""

  def __init__(self, grace_s):
    self.grace_s = grace_s
    self.signal = None
    self._previous, self._wakeup, self._watchdog = {}, None, None

  @property
  def requested(self):
    return self.signal is not None

  def _handle(self, signum, frame):  # main thread, between bytecodes, once per signal
    self._handled += 1
    if signum == signal.SIGINT and self._handled > 1:
      raise KeyboardInterrupt

  def _read_signals(self, fd):  # the helper thread: wakes on every signal at once
    while True:
      try:
        data = os.read(fd, 16)
      except OSError:
        return
      if not data:
        os.close(fd)
        return
      for signum in data:
        if self.signal is None:
          self.signal = signum
          logging.warning("Received %s: stopping after the next step and saving a checkpoint (at most %.0f s)",
                          signal.Signals(signum).name, self.grace_s)
          self.arm(signum)

  def arm(self, signum=signal.SIGTERM):
    """Starts the grace-period watchdog (once); every process arms it when the stop is agreed."""
    if self._watchdog is None and self.grace_s > 0:
      self._watchdog = threading.Timer(self.grace_s, self._expire, args=(signum,))
      self._watchdog.daemon = True
      self._watchdog.start()

  def _expire(self, signum):
    logging.error("The checkpoint was not written within the %.0f s grace period; exiting without it", self.grace_s)
    os._exit(128 + signum)

  def __enter__(self):
    self._handled = 0
    if self.grace_s > 0 and threading.current_thread() is threading.main_thread():
      read, write = os.pipe()
      os.set_blocking(write, False)
      self._wakeup = (read, write, signal.set_wakeup_fd(write, warn_on_full_buffer=False))
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
      threading.Thread(target=self._read_signals, args=(read,), daemon=True).start()
    return self

  def __exit__(self, *exc):  # the checkpoint is written: the watchdog has done its job
    if self._watchdog is not None:
      self._watchdog.cancel()
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    if self._wakeup:
      read, write, previous_fd = self._wakeup
      signal.set_wakeup_fd(previous_fd)
      os.close(write)  # the reader thread sees end of file and returns
      self._wakeup = None
    self._previous = {}

"""What keeps a long run's work when something goes wrong: stop signals, non-finite losses,
failed saves and the leftovers of a killed one.

- `StopSignals`: the first SIGINT/SIGTERM/SIGHUP asks the loop to stop after the current step
  and save a checkpoint; a second one stops at once (KeyboardInterrupt). Output that goes away
  (the reader of a pipe has ended, the terminal hung up) asks for the same clean stop instead
  of failing the next print.
- `NonFiniteGuard`: the --on-nan policy. "stop" ends the run before a NaN/Inf loss can reach
  a checkpoint; "skip" drops that step's update and counts it.
- `LateRead`: a step's flags (summed loss, stop votes) read on the host one step late, so
  the host does not wait for the GPU every step.
- `save_failed`: a failed write (disk full, read-only or immutable folder) as one line
  naming the folder, the free space and how to continue.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..errors import RunError, UserError, first_line, path_error_kind

ON_NAN_CHOICES = ("stop", "skip")
MAX_SKIPS_IN_A_ROW = 20  # that many bad steps in a row: the weights themselves are broken, skipping cannot help
# SIGHUP: the terminal or ssh session the run was started from has gone away.
STOP_SIGNALS = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}
# Under torchrun a scheduler's signal can reach a process twice within moments (directly, and
# passed on by torchrun): that is one request, not the "stop at once" of a second one.
REPEAT_GRACE_S = 2.0
# Stop votes, summed over the processes of a job: a SIGINT's counts 1, a SIGTERM's this much, so
# the sum still tells whether any process got a Ctrl-C (exact in float32 up to 16k processes).
# A SIGHUP's counts as a SIGTERM's: both mean "this job's session is ending", not a Ctrl-C.
STOP_VOTE_SIGTERM = 1024


class StopRequested(RunError):
    """The run stopped on request after saving a checkpoint; exit code 128 + the signal number."""

    requested = True  # the CLI prints it without "error:": the user asked for it

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def _to_devnull(fds: Iterable[int], chosen: Callable[[int], bool]) -> None:
    """Point each descriptor in `fds` for which `chosen(fd)` holds at /dev/null; a closed one
    (OSError) is skipped: there is nothing to protect."""
    with open(os.devnull, "r+b") as devnull:
        for fd in fds:
            try:
                if chosen(fd):
                    os.dup2(devnull.fileno(), fd)
            except OSError:
                pass


def detach_from_terminal() -> None:
    """Point whichever of stdin/stdout/stderr is a hung-up terminal at /dev/null.

    After a hangup every write to the terminal fails (EIO), and the loop still has a step, a
    progress bar and a checkpoint line to get through before it stops. A hung-up terminal is
    a character device that no longer answers isatty() (that ioctl fails with EIO too); a live
    terminal (a `kill -HUP` from elsewhere) keeps its output, and so does a file or pipe."""
    def hung_up(fd: int) -> bool:
        return stat.S_ISCHR(os.fstat(fd).st_mode) and not os.isatty(fd)

    _to_devnull((0, 1, 2), hung_up)


# The errors of a write whose reader has gone: a pipe's (EPIPE), a hung-up terminal's (EIO).
LOST_OUTPUT_ERRNOS = (errno.EPIPE, errno.EIO)


def _silence_fd(lost: int) -> None:
    """Point descriptor `lost` at /dev/null, and stdout/stderr too where they are the same pipe or
    terminal (`2>&1 | tee log`): the error line and the resume command would fail there next."""
    same = os.fstat(lost)
    _to_devnull({lost, 1, 2}, lambda fd: os.path.samestat(os.fstat(fd), same))


class _OutputWatch:
    """sys.stdout/sys.stderr during a run: a write that fails because the output has gone
    points that descriptor at /dev/null and asks for a stop instead of raising, so a
    `googlenet train | tee log` whose tee has ended still saves its checkpoint."""

    def __init__(self, stream: Any, lost: Any) -> None:
        self._stream, self._lost = stream, lost

    def _guarded(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except OSError as error:
            if error.errno not in LOST_OUTPUT_ERRNOS:
                raise
            try:
                _silence_fd(self._stream.fileno())
            except (OSError, ValueError):
                pass  # no descriptor of its own: the stream stays, its next failure lands here again
            self._lost()
            return len(args[0]) if args else None

    def write(self, text: str) -> int:
        return self._guarded(self._stream.write, text)

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, ...: the stream's own
        return getattr(self._stream, name)


class StoppedAtOnce(KeyboardInterrupt):
    """A second stop signal: the run ends now, without a checkpoint; the message says what is lost."""


class StopSignals:
    """Context manager that turns the first SIGINT/SIGTERM/SIGHUP into a flag the loop checks.

    Handlers are installed only in the main thread (Python's rule) and the previous ones
    are restored on exit, so the API can run inside other programs. A SIGHUP that is being
    ignored (the run was started under `nohup`) stays ignored: the user asked for the run to
    outlive its terminal. Lost output (see `_OutputWatch`) is a stop request too, reported
    as SIGPIPE; a signal that comes after it is still the first one, not the "at once" second.
    """

    phase = "step"  # what a stop waits for; the loop names the test pass while one runs

    def __init__(self, run_dir: Path | None = None) -> None:
        self.run_dir = run_dir  # where the last checkpoint is, for the "stopped at once" message
        self.received: int | None = None
        self._received_at = 0.0
        self._previous: dict[int, object] = {}
        self._streams: tuple[Any, Any] | None = None
        self._pid = os.getpid()
        self._depth = 0  # nested entries: only the outermost installs and restores

    def __enter__(self) -> "StopSignals":
        self._depth += 1
        if self._depth > 1:
            return self
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN:
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
            self._streams = (sys.stdout, sys.stderr)
            if sys.stdout is not None:  # None: started without one (print() then writes nothing)
                sys.stdout = _OutputWatch(sys.stdout, self._output_lost)
            if sys.stderr is not None:
                sys.stderr = _OutputWatch(sys.stderr, self._output_lost)
        return self

    def __exit__(self, *exc) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self._restore()

    def _restore(self) -> None:
        """Put back the handlers and streams found on entry."""
        self._depth = 0
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._streams is not None:
            sys.stdout, sys.stderr = self._streams
            self._streams = None

    @property
    def _signalled(self) -> bool:
        """A stop signal has arrived (lost output alone, SIGPIPE, does not count: a signal after it is a first one)."""
        return self.received not in (None, signal.SIGPIPE)

    def _output_lost(self) -> None:
        if self.received is None:
            self.received, self._received_at = signal.SIGPIPE, time.monotonic()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        from .distributed import env_rank, launched_by_torchrun

        if signum == signal.SIGHUP:
            detach_from_terminal()  # first, in every process: the writes below would fail otherwise
        if os.getpid() != self._pid:
            # A DataLoader worker forked during the run inherits this handler: the main process
            # decides when to stop, and a worker that stopped itself would fail the loader.
            return
        if signum == signal.SIGHUP and self._signalled:
            # A closing terminal often hangs the job up twice (the shell passes its own SIGHUP on,
            # then the kernel sends one as it exits): one request, not "stop at once".
            return
        if self._signalled:
            if (signum == self.received and launched_by_torchrun()
                    and time.monotonic() - self._received_at < REPEAT_GRACE_S):
                return  # the same request delivered twice
            self._restore()  # asked twice: stop now, without a checkpoint
            raise StoppedAtOnce(self._lost_work(signum))
        self.received, self._received_at = signum, time.monotonic()
        if env_rank() == 0:  # one line per job, not per process
            try:
                # On a terminal the line starts below the progress bar; in a log file, no blank line.
                newline = "\n" if sys.stderr.isatty() else ""
                print(f"{newline}{STOP_SIGNALS[signum]} received: stopping after the current {self.phase} and "
                      "saving a checkpoint (send it again to stop at once, losing the work since the last "
                      "checkpoint)", file=sys.stderr, flush=True)
            except OSError:  # stderr has gone too; raised here, it would land in whatever code was running
                pass

    def _lost_work(self, signum: int) -> str:
        what = f"stopped at once by a second {signal.Signals(signum).name}"
        if self.run_dir is None:
            return what
        last = self.run_dir / "last.pt"
        if last.is_file():
            return (f"{what}: the work since the last checkpoint is lost; continue from {last} with: "
                    f"googlenet train --resume {self.run_dir}")
        return f"{what}, before the first checkpoint: nothing was saved; start the run again"

    def vote(self) -> float:
        """This process's stop vote: 0 (no request), 1 (SIGINT) or STOP_VOTE_SIGTERM (any other)."""
        if self.received is None:
            return 0.0
        return 1.0 if self.received == signal.SIGINT else float(STOP_VOTE_SIGTERM)

    def join(self, votes: float) -> None:
        """The job's summed votes (> 0): a process not signalled itself takes SIGINT if any
        process got one, else SIGTERM, so every process reports the same signal."""
        if self.received is None:
            self.received = signal.SIGINT if int(votes) % STOP_VOTE_SIGTERM else signal.SIGTERM

    def stopped(self, step: int) -> StopRequested:
        """The error that ends a run stopped on request at `step`, its checkpoint saved in run_dir."""
        signum, run_dir = self.received or signal.SIGINT, self.run_dir
        why = ("because its output went away (SIGPIPE: the pipe's reader ended or the terminal closed)"
               if signum == signal.SIGPIPE else f"by {signal.Signals(signum).name}")
        return StopRequested(f"stopped {why} at step {step}; checkpoint saved in {run_dir / 'last.pt'}; "
                             f"continue with: googlenet train --resume {run_dir}", signum)


class NonFiniteGuard:
    """Decides what a step with a NaN/Inf loss does (config key / flag on_nan)."""

    def __init__(self, policy: str, lr: float) -> None:
        if policy not in ON_NAN_CHOICES:
            raise ValueError(f"on_nan must be one of {ON_NAN_CHOICES}, not {policy!r}")
        self.policy, self.lr = policy, lr
        self.skipped = 0  # steps whose update was dropped, over the whole run
        self.in_a_row = 0

    def allows_update(self, loss: float, step: int, epoch: int, checkpoint: Path) -> bool:
        """True for a finite loss; False to skip the update; raises RunError to stop the run."""
        if torch.isfinite(torch.tensor(loss)):
            self.in_a_row = 0
            return True
        kept = (f"{checkpoint} (the last good checkpoint) is kept" if checkpoint.is_file()
                else "no checkpoint was written yet")
        where = f"step {step + 1} (epoch {epoch + 1})"
        if self.policy == "stop":
            raise RunError(f"the loss became {loss} at {where}; stopped before it reached a checkpoint, {kept}. "
                           f"Lower the learning rate (--lr, now {self.lr:g}) and start again, or resume and skip "
                           "such steps with --on-nan skip")
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row > MAX_SKIPS_IN_A_ROW:
            raise RunError(f"the loss was NaN/Inf for {self.in_a_row} steps in a row (up to {where}); the "
                           f"weights are broken, {kept}. Lower the learning rate (--lr, now {self.lr:g})")
        return False


class LateRead:
    """Hands back a small device tensor on the host one step after it was put.

    Reading a step's flags at once (`.tolist()`) makes the host wait, every step, for the GPU
    to finish the step it has just queued; the GPU then idles while Python queues the next
    one, and for a network of GoogLeNet's many small kernels that idle time is a large share
    of the step. Read one step late, the host stays a step ahead. On a CPU the copy is
    immediate and only the order changes.
    """

    def __init__(self) -> None:
        self._pending: tuple[torch.Tensor, Any, Any] | None = None

    def put(self, values: torch.Tensor, tag: Any) -> None:
        """Start copying `values` to the host; `tag` comes back with them from `take`."""
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=values.is_cuda)
        host.copy_(values, non_blocking=values.is_cuda)  # elsewhere a plain copy: nothing to wait for later
        done = None
        if values.is_cuda:
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(values.device))  # the stream the copy was queued on
        self._pending = (host, done, tag)

    def take(self) -> tuple[list, Any] | None:
        """The values last put (as a list) and their tag, waiting for that copy only; None if none."""
        if self._pending is None:
            return None
        host, done, tag = self._pending
        self._pending = None
        if done is not None:
            done.synchronize()
        return host.tolist(), tag


def buffers_snapshot(model: nn.Module) -> list[torch.Tensor]:
    """Copies of the model's buffers (batch-norm statistics), restored when a step is skipped:
    the forward pass of a NaN step has already updated them."""
    return [b.detach().clone() for b in model.buffers()]


def restore_buffers(model: nn.Module, saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), saved):
            buffer.copy_(value)


def all_finite(model: nn.Module) -> bool:
    """True if every parameter and floating-point buffer is finite (one sync)."""
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def save_failed(path: str | os.PathLike, error: BaseException, run_dir: str | os.PathLike | None = None) -> RunError:
    """A one-line RunError for a write that failed (ENOSPC, EACCES, EROFS, EPERM, EFBIG, ...)."""
    path = Path(path)
    folder = path.parent
    reason = getattr(error, "strerror", None) or first_line(error)
    try:
        free = f"{shutil.disk_usage(folder).free / 2 ** 20:,.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    resume = f", then continue with: googlenet train --resume {run_dir}" if run_dir is not None else ""
    return RunError(f"cannot write {path.name} in {folder} ({reason[:160]}; {free}); the previous file there is "
                    f"intact. Free disk space or make the folder writable{resume}")


def write_error(error: BaseException, run_dir: str | os.PathLike) -> UserError | None:
    """`error` as a save failure if it is a failed write into the run folder, else None."""
    given = Path(run_dir)
    run_dir = given.resolve()
    if isinstance(error, OSError) and error.filename:
        path = Path(error.filename).resolve()
        if (path == run_dir or path in run_dir.parents) and not run_dir.is_dir():
            # The run folder itself could not be made: --out names a file, or a place that cannot hold one.
            reason = f"{error.strerror or first_line(error)}: {error.filename}"
            blocker = next((p for p in (given, *given.parents) if p.is_file()), None)
            if blocker is not None:  # --out names a file, or a folder inside one
                reason = f"{blocker} is a file"
            return path_error_kind(error)(f"cannot create the run folder {given} ({reason}); pick another --out")
        if path == run_dir or run_dir in path.parents:
            name = path.name
            if name.startswith(".") and name.endswith(".tmp"):  # atomic_write's .<name>.<random>.tmp
                name = name[1:-4].rsplit(".", 1)[0]
            return save_failed(path.parent / name, error, run_dir)
    if type(error).__name__ == "SafetensorError" and "I/O error" in str(error):  # model.safetensors
        return save_failed(run_dir / "model.safetensors", error, run_dir)
    return None


class RunLock:
    """An exclusive lock on RUN/.lock while a process trains into RUN: a second `googlenet train`
    on the same folder stops with one line instead of both writing the same checkpoints.
    flock locks vanish with their process, so a killed run never leaves a stale lock.
    A run that fails before writing anything (unknown data folder, images too small) takes its
    lock file, and the folders it made, with it: a corrected command can reuse the same --out."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None
        self.made: list[Path] = []  # folders this lock created, deepest first
        self.made_file = False  # RUN/.lock did not exist before

    def __enter__(self) -> "RunLock":
        import fcntl

        self.made = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.made_file = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return self  # a folder we cannot write fails later with its own message
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner(fd)
            os.close(fd)
            raise in_use_error(self.path.parent, owner) from None
        except OSError:  # a filesystem without flock: train unguarded rather than not at all
            os.close(fd)
            return self
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.fd is None:
            return
        if exc_type is not None and self.made_file and _holds_only(self.path.parent, self.path.name):
            # Unlinked while still locked: a second train that opened the same file meanwhile
            # fails its flock; one arriving later finds a non-empty folder and keeps it.
            with contextlib.suppress(OSError):
                self.path.unlink()
            for folder in self.made:
                try:
                    folder.rmdir()
                except OSError:  # not empty (someone else's now) or gone: leave it
                    break
        os.close(self.fd)  # releases the lock
        self.fd = None


def _lock_owner(fd: int) -> str:
    """The pid a RunLock wrote into its lock file ("?" if it has not written it yet)."""
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"


def in_use_error(run_dir: str | os.PathLike, owner: str) -> UserError:
    return UserError(f"{run_dir} is in use by another googlenet train (pid {owner}); wait for it to finish or "
                     "stop it, or pick another --out")


def run_in_use(run_dir: str | os.PathLike) -> str | None:
    """The pid of the live process training into `run_dir` (as RUN/.lock holds it), or None when
    no process holds its lock. The probe takes a shared lock and drops it at once, so two probes
    never trip each other; it neither creates nor changes the lock file."""
    import fcntl

    try:
        fd = os.open(Path(run_dir) / ".lock", os.O_RDONLY)
    except OSError:  # no lock file (or unreadable): no run holds it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _lock_owner(fd)
    except OSError:  # a filesystem without flock: RunLock trains unguarded there, so nothing holds it
        return None
    finally:
        os.close(fd)  # closing drops the probe's own lock, if it got one
    return None


def refuse_unusable_run(folder: str | os.PathLike, resume: bool) -> None:
    """The UserError for a run folder `train` cannot use, worded by what happened to it: another
    train still holds it (as --out or --resume: its lock would refuse either), or --resume
    names a run killed before its first checkpoint. Other cases are left to train itself."""
    import shlex

    from .checkpoint import LAST

    folder = Path(folder)
    if resume and folder.is_file():  # --resume RUN/last.pt
        folder = folder.parent
    owner = run_in_use(folder)
    if owner is not None:
        raise in_use_error(folder, owner)
    if not resume or not folder.is_dir() or (folder / LAST).exists():
        return
    config = folder / "config.yaml"  # the first file a run writes, before its first step
    if config.is_file():
        raise UserError(f"{folder} stopped before its first checkpoint: nothing to resume; start it again with "
                        f"`googlenet train --config {shlex.quote(str(config))} --out {shlex.quote(str(folder))}`")
    if (folder / ".lock").is_file():  # killed while still loading its data
        raise UserError(f"{folder} stopped before its first checkpoint: nothing to resume; start it again with "
                        f"the command that started it (--out {folder} is free to reuse)")


def _holds_only(folder: Path, name: str) -> bool:
    try:
        return [p.name for p in folder.iterdir()] == [name]
    except OSError:
        return False


def remove_stale_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of writes a killed process never finished (fileio.atomic_write
    names them .<name>.<random>.tmp): each can be as large as a checkpoint."""
    removed = []
    for path in Path(run_dir).glob(".*.tmp"):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


__all__ = ["NonFiniteGuard", "ON_NAN_CHOICES", "RunLock", "StopRequested", "StopSignals", "all_finite", "buffers_snapshot",
           "in_use_error", "refuse_unusable_run", "remove_stale_temp_files", "restore_buffers", "run_in_use", "save_failed", "write_error"]

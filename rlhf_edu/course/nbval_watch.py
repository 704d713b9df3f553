"""A pytest plugin for nbval: the lost-reply check of `rlhf_edu.course.kernel_watch`, and the preset's
per-cell timeout. `make test` loads it: `pytest -p rlhf_edu.course.nbval_watch --nbval-lax notebooks/`.

nbval (0.11) waits for a cell's `execute_reply` on the shell channel for `--nbval-cell-timeout`
seconds (2000 by default) and only then reads the cell's outputs from iopub. A lost reply therefore
cost the whole timeout. Here the wait also reads iopub, keeping every message for nbval to read
afterwards, and fails the cell once its idle status has come but its reply has not within
`--lost-reply-grace` seconds. The rest of that notebook is then skipped: its kernel can no longer
be trusted to answer.
"""

from __future__ import annotations

import collections
import os
import time
from queue import Empty

import pytest

from rlhf_edu.course.kernel_watch import (
    LOST_REPLY_GRACE,
    LostReplyError,
    describe_cell,
    lost_reply_message,
)

SHELL_POLL = 1.0
"""Seconds between looks at iopub while waiting for the reply."""


def pytest_addoption(parser):
    parser.getgroup("nbval").addoption(
        "--lost-reply-grace",
        type=float,
        default=LOST_REPLY_GRACE,
        help="seconds from a cell's idle status to its execute_reply before the reply counts as lost",
    )


def pytest_configure(config):
    from nbval import kernel, plugin

    if not getattr(kernel.RunningKernel.await_reply, "watched", False):
        kernel.RunningKernel.await_reply = await_reply_watching_idle
        kernel.RunningKernel.get_message = kept_messages_first(kernel.RunningKernel.get_message)
        plugin.IPyNbCell.runtest = watched_runtest(plugin.IPyNbCell.runtest)
    if not any(str(a).startswith("--nbval-cell-timeout") for a in config.invocation_params.args):
        from rlhf_edu.presets import get_preset

        config.option.nbval_cell_timeout = float(get_preset().cell_timeout)


def kept_messages_first(get_message):
    """Wrap nbval's `RunningKernel.get_message`: iopub messages read while waiting come first."""

    def get(self, stream, timeout=None):
        kept = self.__dict__.setdefault("kept_iopub", collections.deque())
        if stream == "iopub" and kept:
            return kept.popleft()
        return get_message(self, stream, timeout=timeout)

    return get


def await_reply_watching_idle(self, msg_id, timeout=None):
    """nbval's `RunningKernel.await_reply` (raises `Empty` after `timeout` seconds), that also
    raises `LostReplyError` when the idle status of `msg_id` came `grace` seconds ago but no reply."""
    kept = self.__dict__.setdefault("kept_iopub", collections.deque())
    grace = getattr(self, "lost_reply_grace", LOST_REPLY_GRACE)
    deadline = None if timeout is None else time.monotonic() + timeout
    idle_at = None
    while True:
        try:
            msg = self.kc.get_shell_msg(timeout=SHELL_POLL)
        except Empty:
            pass
        else:
            if msg["parent_header"].get("msg_id") == msg_id:
                if msg["content"]["status"] == "aborted":
                    raise RuntimeError("Kernel aborted execution request")
                return
            continue
        while idle_at is None:  # read iopub up to the cell's idle status, keeping every message
            try:
                msg = self.kc.get_iopub_msg(timeout=0)
            except Empty:
                break
            kept.append(msg)
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            ):
                idle_at = time.monotonic()
        if idle_at is not None and time.monotonic() - idle_at > grace:
            where = getattr(self, "current_cell", "a cell")
            raise LostReplyError(lost_reply_message(where, grace))
        if deadline is not None and time.monotonic() > deadline:
            raise Empty


await_reply_watching_idle.watched = True


def watched_runtest(runtest):
    """Wrap nbval's `IPyNbCell.runtest`: tell the kernel which cell runs, pass the grace period,
    and skip the cells after a lost reply."""

    def run(self):
        notebook = self.parent
        if getattr(notebook, "lost_reply", None):
            pytest.skip(f"skipped after a lost reply in {notebook.lost_reply}")
        kernel = notebook.kernel
        index = next((i for i, c in enumerate(notebook.nb.cells) if c is self.cell), -1)
        kernel.current_cell = describe_cell(os.path.basename(str(notebook.fspath)), index, self.cell.source)
        kernel.lost_reply_grace = self.config.getoption("lost_reply_grace")
        try:
            return runtest(self)
        except LostReplyError:
            notebook.lost_reply = kernel.current_cell
            raise

    run.watched = True
    return run

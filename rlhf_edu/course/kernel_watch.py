"""A notebook client that never waits forever for a reply the kernel already sent, or lost.

A kernel answers each cell twice: on the iopub channel it publishes the cell's outputs and then
`status: idle`, and on the shell channel it sends the `execute_reply`. nbclient waits for the
reply with one long poll of the shell socket (as long as the per-cell timeout). In a cell that
shows an Output widget (notebook 05's frontier explorer), nbclient's stand-in for the widget sends
comm messages on that same socket meanwhile, and now and then the poll misses its wake-up: the
reply sits in the socket, the kernel sits idle at 0% CPU, and the run waits out the timeout
(nbclient issue #312). Measured (bench/kernel_hangs.py): 2 such stalls in 50 executions of a
widget cell, with ipykernel 6.31 and 7.4 alike; each time a fresh poll found the reply at once.

`WatchedClient` watches both channels. Once the cell's idle status has come and the reply has not
within a second, it polls the shell socket afresh, once a second: a reply found that way counts in
`recovered_replies` and the run goes on. If none comes within `lost_reply_grace` seconds, the
reply is lost (ipykernel sends replies from a thread of its own since 7.0; issues #1529, #1554)
and it raises `LostReplyError` naming the notebook and the cell.

`rlhf_edu.course` runs the notebooks with it; `rlhf_edu.course.nbval_watch` applies the lost-reply check
to nbval in `make test` (nbval sends nothing on the shell socket, so it misses no wake-up).
"""

from __future__ import annotations

import asyncio
import contextlib
from queue import Empty
from time import monotonic

from nbclient import NotebookClient
from nbclient.client import timestamp
from nbclient.util import ensure_async
from traitlets import Float, Integer, Unicode

LOST_REPLY_GRACE = 60.0
"""Seconds between the cell's idle status and its reply before the reply counts as lost."""

REPLY_AFTER_IDLE = 1.0
"""Seconds the usual wait gets after the idle status before the shell socket is polled afresh
(a reply normally follows its idle status within milliseconds)."""


class LostReplyError(RuntimeError):
    """The kernel published `status: idle` for a cell but its `execute_reply` never came."""


def describe_cell(notebook: str, index: int, source: str) -> str:
    """`notebook 05_x.ipynb, cell 48 ("explorer = ...")`: the cell's index in the notebook's
    list of cells (markdown included, counted from 0) and its first line."""
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    if len(first) > 60:
        first = first[:57] + "..."
    return f'notebook {notebook}, cell {index} ("{first}")'


def lost_reply_message(where: str, grace: float) -> str:
    return (
        f"{where}: the kernel went idle without replying (lost reply): its idle status came but "
        f"no execute_reply within {grace:g} s, though the shell socket was polled afresh every "
        "second. The cell's outputs are all in. Rerun the notebook."
    )


class WatchedClient(NotebookClient):
    """nbclient's NotebookClient that recovers a reply whose wake-up was missed and fails a cell
    whose reply is lost, instead of waiting for the per-cell timeout.

    nbclient waits for a cell with two tasks: one reads iopub until the cell's idle status
    (`_async_poll_output_msg`), the other reads the shell channel until the cell's reply
    (`_async_poll_for_reply`). This class wraps the second.
    """

    lost_reply_grace = Float(LOST_REPLY_GRACE, help="seconds from idle to reply").tag(config=True)
    notebook_name = Unicode("", help="the notebook's file name, for messages").tag(config=True)
    recovered_replies = Integer(0, help="replies found by a fresh poll after a missed wake-up")

    async def _async_poll_for_reply(self, msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive):
        reply = asyncio.ensure_future(
            super()._async_poll_for_reply(msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive)
        )
        try:
            await asyncio.wait({reply, task_poll_output_msg}, return_when=asyncio.FIRST_COMPLETED)
            if not reply.done():  # the idle status came first: the reply should follow at once
                await asyncio.wait({reply}, timeout=REPLY_AFTER_IDLE)
            if reply.done():
                return reply.result()
        finally:
            if not reply.done():
                reply.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reply  # its poll of the shell socket has ended before ours begins
        try:
            return await self._poll_afresh(msg_id, cell)
        finally:
            task_poll_kernel_alive.cancel()

    async def _poll_afresh(self, msg_id, cell):
        """The cell's reply, read from the shell socket with a new poll each second, or
        `LostReplyError` after `lost_reply_grace` seconds."""
        deadline = monotonic() + self.lost_reply_grace
        while monotonic() < deadline:
            try:
                msg = await ensure_async(self.kc.shell_channel.get_msg(timeout=1.0))
            except Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                self.recovered_replies += 1
                self.log.warning("%s: reply found by a fresh poll (nbclient #312)", self._where(cell))
                if self.record_timing:
                    cell["metadata"]["execution"]["shell.execute_reply"] = timestamp(msg)
                return msg
        raise LostReplyError(lost_reply_message(self._where(cell), self.lost_reply_grace))

    def _where(self, cell) -> str:
        index = next((i for i, c in enumerate(self.nb.cells) if c is cell), -1)
        return describe_cell(self.notebook_name or "(unnamed)", index, cell.source)

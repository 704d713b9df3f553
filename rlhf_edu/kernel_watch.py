"""A notebook client that notices a lost reply: the kernel went idle but never answered.

A kernel answers each cell twice: on the iopub channel it publishes the cell's outputs and then
`status: idle`, and on the shell channel it sends the `execute_reply`. ipykernel 7 sends shell
replies from a thread of its own, and a reply lost on the way (ipykernel issues #1529 and #1554,
nbclient #312 for cells with widgets) leaves the client waiting for the whole per-cell timeout
while the kernel sits idle at 0% CPU. `WatchedClient` watches both channels: once the cell's idle
status has come, the reply must follow within `lost_reply_grace` seconds (it normally comes within
milliseconds), otherwise it raises `LostReplyError` naming the notebook and the cell.

`rlhf_edu.course` runs the notebooks with it; `rlhf_edu.nbval_watch` applies the same check to
nbval in `make test`.
"""

from __future__ import annotations

import asyncio

from nbclient import NotebookClient
from traitlets import Float, Unicode

LOST_REPLY_GRACE = 60.0
"""Seconds between the cell's idle status and its reply before the reply counts as lost."""


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
        f"no execute_reply within {grace:g} s. The cell's outputs are all in; the kernel's shell "
        "reply was lost (ipykernel #1554). Rerun the notebook."
    )


class WatchedClient(NotebookClient):
    """nbclient's NotebookClient that fails a cell whose reply is lost instead of waiting for the
    per-cell timeout.

    nbclient waits for a cell with two tasks: one reads iopub until the cell's idle status
    (`_async_poll_output_msg`), the other reads the shell channel until the cell's reply
    (`_async_poll_for_reply`). This class wraps the second: if the first finishes and the second
    has not within `lost_reply_grace` seconds, the reply is lost.
    """

    lost_reply_grace = Float(LOST_REPLY_GRACE, help="seconds from idle to reply").tag(config=True)
    notebook_name = Unicode("", help="the notebook's file name, for messages").tag(config=True)

    async def _async_poll_for_reply(
        self, msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive
    ):
        reply = asyncio.ensure_future(
            super()._async_poll_for_reply(
                msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive
            )
        )
        try:
            await asyncio.wait({reply, task_poll_output_msg}, return_when=asyncio.FIRST_COMPLETED)
            if not reply.done():  # the idle status came first: the reply has a grace period
                await asyncio.wait({reply}, timeout=self.lost_reply_grace)
            if not reply.done():
                task_poll_kernel_alive.cancel()
                index = next((i for i, c in enumerate(self.nb.cells) if c is cell), -1)
                where = describe_cell(self.notebook_name or "(unnamed)", index, cell.source)
                raise LostReplyError(lost_reply_message(where, self.lost_reply_grace))
            return reply.result()
        finally:
            if not reply.done():
                reply.cancel()

"""A cheap wake-up for one waiting task.

Fan-out to thousands of idle subscribers must not cost a :class:`trio.Event` and a
cancellation per wake-up; :class:`Waiter` parks the task with
:func:`trio.lowlevel.wait_task_rescheduled` and wakes it with a plain
:func:`trio.lowlevel.reschedule`, a few microseconds each.
"""

from __future__ import annotations

import math

import trio

__all__ = ["Waiter"]


class Waiter:
    """A level-triggered wake-up for (at most) one waiting task.

    :meth:`wake` before :meth:`wait` is not lost: the flag stays set and the next
    :meth:`wait` returns at once.  Several subscriptions may share one waiter (a
    WebSocket session following many topics); whoever waits must then look at all
    of them after each wake-up, because :meth:`clear` forgets which one woke it.
    """

    __slots__ = ("_flag", "_task")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._flag = False

    def wake(self) -> bool:
        """Set the flag and wake the waiting task, if any (then ``True``)."""
        self._flag = True
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)
            return True
        return False

    def clear(self) -> None:
        """Forget a pending wake-up (the caller is about to look at the state itself)."""
        self._flag = False

    @property
    def is_set(self) -> bool:
        """Whether a wake-up is pending."""
        return self._flag

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait(self, deadline: float = math.inf) -> bool:
        """Wait for :meth:`wake` or until *deadline* (Trio time); clear the flag.

        Returns ``True`` when woken, ``False`` when the deadline passed first.  Only
        one task may wait at a time.
        """
        if self._flag:
            self._flag = False
            await trio.lowlevel.checkpoint()
            return True
        if self._task is not None:
            raise RuntimeError("another task is already waiting on this Waiter")
        if deadline == math.inf:
            self._task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        else:
            with trio.CancelScope(deadline=deadline):
                self._task = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._abort)
        woken = self._flag
        self._flag = False
        return woken

"""How a dialog's state changes, in one place (OpenSIPS ``next_state_dlg`` and its callers).

:func:`transition` is the only caller of ``Dialog.apply`` (the table in :mod:`engine.dialog`):
it keeps the ``early_dialogs``/``active_dialogs`` gauges from the (old, new) pair, queues the
``StateChanged`` effect, and counts the pairs the table neither allows nor expects
(``stats.unexpected_transitions``).  :func:`fail` and :func:`terminate` end a dialog.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .dialog import ANSWERED, IGNORED, Dialog, DlgEvent, DlgState

if TYPE_CHECKING:
    from .proxy import Engine


def transition(eng: Engine, dlg: Dialog, event: DlgEvent) -> DlgState | None:
    """Move ``dlg`` along the table; returns the old state, or None if it did not move."""
    old = dlg.apply(event)
    if old is None:
        if (dlg.state, event) not in IGNORED:
            eng.stats.unexpected_transitions += 1
        return None
    new = dlg.state
    stats = eng.stats
    if old is DlgState.EARLY:
        stats.early_dialogs -= 1
    elif new is DlgState.EARLY:
        stats.early_dialogs += 1
    if new in ANSWERED and old not in ANSWERED:
        stats.active_dialogs += 1
    elif old in ANSWERED and new not in ANSWERED:
        stats.active_dialogs -= 1
    eng.notify(dlg, old)
    return old


def fail(eng: Engine, dlg: Dialog) -> None:
    """A negative final reply (or a timeout) to the initial INVITE."""
    if dlg.state not in (DlgState.UNCONFIRMED, DlgState.EARLY):
        return
    if transition(eng, dlg, DlgEvent.FAILED) is not None:
        eng.stats.failed_dialogs += 1
        _ended(eng, dlg)


def terminate(eng: Engine, dlg: Dialog, reason: str | None) -> None:
    """End a dialog (state 5) with ``reason`` unless an earlier one was set."""
    if reason is not None:
        dlg.set_end_reason(reason)
    if transition(eng, dlg, DlgEvent.TERMINATE) is not None:
        _ended(eng, dlg)


def _ended(eng: Engine, dlg: Dialog) -> None:
    dlg.ended = eng.now
    eng.mark_dirty(dlg)
    timer = dlg.timer
    if timer is not None:
        timer.cancel()  # type: ignore[attr-defined]
        dlg.timer = None
    eng.dialog_ended(dlg)
    delay = eng.config.delete_delay
    if delay > 0:
        eng.timers.call_later(eng.now, delay, eng.dialogs.remove, dlg)
    else:
        eng.dialogs.remove(dlg)

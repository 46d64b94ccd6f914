"""Dialog lifetimes (OpenSIPS ``dlg_timer``): armed at the 2xx, changed by the MI, cut short
by a CANCEL/2xx race; when one runs out the dialog is ended with BYEs (flag B) or expires."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import dlg_req_within
from .dialog import ANSWERED, Dialog, DlgState, EndReason
from .dlg_life import terminate

if TYPE_CHECKING:
    from .proxy import Engine


def on_race_condition(eng: Engine, dlg: Dialog) -> None:
    """A CANCEL and a 2xx crossed: the call is up, but its caller may believe it cancelled and
    never ACK or BYE it.  As OpenSIPS does, the lifetime is cut to ``race_condition_timeout``;
    a BYE within it ends the call as usual, else both sides get a BYE ("SIP Race Condition")."""
    if dlg.state not in ANSWERED or dlg.race_condition:
        return
    dlg.race_condition = True
    if dlg.end_reason == EndReason.CANCELLED:
        dlg.end_reason = None  # it was answered, not cancelled
    timeout = eng.config.race_condition_timeout
    if dlg.timeout == 0 or dlg.timeout > eng.wall() + timeout:
        arm_lifetime(eng, dlg, timeout)


def arm_lifetime(eng: Engine, dlg: Dialog, seconds: float, *, store: bool = True) -> None:
    """(Re)start the lifetime timer; ``timeout`` shows the absolute expiry (to be stored,
    unless ``store`` is False: a dialog restored from its row)."""
    timer = dlg.timer
    if timer is not None:
        timer.cancel()  # type: ignore[attr-defined]
    dlg.timeout = int(eng.wall() + seconds)
    if store:
        eng.mark_dirty(dlg)
    dlg.timer = eng.timers.call_later(eng.now, seconds, on_lifetime, eng, dlg)


def on_lifetime(eng: Engine, dlg: Dialog) -> None:
    dlg.timer = None
    if dlg.state not in ANSWERED:
        return
    eng.stats.expired_dialogs += 1
    if dlg.race_condition:
        dlg_req_within.end_dialog(eng, dlg, EndReason.SIP_RACE_CONDITION, "")
    elif eng.config.bye_on_timeout:
        dlg_req_within.end_dialog(eng, dlg, EndReason.LIFETIME_TIMEOUT, "")
    else:  # without flag B the dialog just expires: no BYE, no reason (as OpenSIPS)
        terminate(eng, dlg, None)


def set_lifetime(eng: Engine, dlg: Dialog, seconds: int) -> bool:
    """Change a live dialog's remaining lifetime (MI ``dlg_set_timeout``); False if ended."""
    if dlg.state is DlgState.DELETED:
        return False
    dlg.lifetime = seconds
    if dlg.state in ANSWERED:
        arm_lifetime(eng, dlg, seconds)
    return True

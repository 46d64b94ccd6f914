"""Engine counters: OpenSIPS's dialog statistics plus transport/parser counters."""

from __future__ import annotations

from collections import Counter

#: (name, resettable) for the ``dialog:`` group, in OpenSIPS's order.
DIALOG_STATS: tuple[tuple[str, bool], ...] = (
    ("active_dialogs", False),
    ("early_dialogs", False),
    ("processed_dialogs", True),
    ("expired_dialogs", True),
    ("failed_dialogs", True),
    ("create_sent", True),
    ("update_sent", True),
    ("delete_sent", True),
    ("create_recv", True),
    ("update_recv", True),
    ("delete_recv", True),
)


#: Transport and parser counters (group ``core:``).
CORE_STATS: tuple[str, ...] = (
    "rcv_requests",
    "rcv_replies",
    "fwd_requests",
    "fwd_replies",
    "drop_requests",
    "drop_replies",
    "err_requests",
    "err_replies",
    "parse_errors",
    "retransmissions",
    "tcp_connections",
)


class Stats:
    """Plain integer counters; cheap to bump on the hot path."""

    __slots__ = (
        *(name for name, _ in DIALOG_STATS),
        *CORE_STATS,
        "requests_by_method",
        "replies_by_class",
        "sent_requests_by_method",
        "sent_replies_by_class",
        "unexpected_transitions",
        "shed_invites",
    )

    def __init__(self) -> None:
        self.active_dialogs: int = 0
        self.early_dialogs: int = 0
        self.processed_dialogs: int = 0
        self.expired_dialogs: int = 0
        self.failed_dialogs: int = 0
        self.create_sent: int = 0
        self.update_sent: int = 0
        self.delete_sent: int = 0
        self.create_recv: int = 0
        self.update_recv: int = 0
        self.delete_recv: int = 0
        self.rcv_requests: int = 0
        self.rcv_replies: int = 0
        self.fwd_requests: int = 0
        self.fwd_replies: int = 0
        self.drop_requests: int = 0
        self.drop_replies: int = 0
        self.err_requests: int = 0
        self.err_replies: int = 0
        self.parse_errors: int = 0
        self.retransmissions: int = 0
        self.tcp_connections: int = 0
        #: (state, event) pairs the dialog table neither allows nor expects (engine.dlg_life).
        self.unexpected_transitions: int = 0
        #: New INVITEs answered 503 while the shell reported an overload (Engine.set_overload).
        self.shed_invites: int = 0
        self.requests_by_method: Counter[str] = Counter()
        self.replies_by_class: Counter[str] = Counter()
        #: Outgoing messages (retransmissions included), keyed by raw bytes to stay cheap:
        #: the method (b"INVITE") or the status class digit (b"2").
        self.sent_requests_by_method: Counter[bytes] = Counter()
        self.sent_replies_by_class: Counter[bytes] = Counter()

    def dialog_stats(self) -> dict[str, int]:
        return {name: getattr(self, name) for name, _ in DIALOG_STATS}

    def core_stats(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in CORE_STATS}

    def reset(self, name: str) -> bool:
        """Reset one resettable counter; False if it is not resettable."""
        for stat, resettable in DIALOG_STATS:
            if stat == name:
                if resettable:
                    setattr(self, name, 0)
                return resettable
        if name in CORE_STATS:
            setattr(self, name, 0)
            return True
        return False

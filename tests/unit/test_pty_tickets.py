"""PTY tickets: single-use, short-lived, bound to one org, VM and session."""

from __future__ import annotations

from arker.local.pty_tickets import TicketBook


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_names_its_org_once_then_never_again() -> None:
    book = TicketBook(60, 100)
    ticket = book.mint("org-a", "vm-1", "s1")
    assert book.redeem(ticket, "vm-1", "s1") == "org-a"
    assert book.redeem(ticket, "vm-1", "s1") is None


def test_a_ticket_for_another_vm_or_session_is_refused_and_used_up() -> None:
    book = TicketBook(60, 100)
    ticket = book.mint("org-a", "vm-1", "s1")
    assert book.redeem(ticket, "vm-2", "s1") is None
    assert book.redeem(ticket, "vm-1", "s1") is None
    other = book.mint("org-a", "vm-1", "s1")
    assert book.redeem(other, "vm-1", "s2") is None


def test_a_ticket_expires_after_its_lifetime() -> None:
    clock = Clock()
    book = TicketBook(60, 100, clock)
    ticket = book.mint("org-a", "vm-1", "s1")
    clock.now += 60.5
    assert book.redeem(ticket, "vm-1", "s1") is None


def test_tickets_are_unguessable_and_distinct() -> None:
    book = TicketBook(60, 100)
    tickets = {book.mint("org-a", "vm-1", "s1") for _ in range(200)}
    assert len(tickets) == 200
    assert all(len(t) >= 40 for t in tickets)


def test_outstanding_tickets_are_bounded_oldest_first() -> None:
    book = TicketBook(60, 3)
    first = book.mint("org-a", "vm-1", "s1")
    rest = [book.mint("org-a", "vm-1", "s1") for _ in range(3)]
    assert book.redeem(first, "vm-1", "s1") is None
    assert all(book.redeem(t, "vm-1", "s1") == "org-a" for t in rest)

"""Where a dial loop looks for its device: every address heard for it, and which one next.

Sans-I/O (STYLE §1): no sockets, no clock.  `SyncService` asks `Addresses.next` before each
attempt and reports the outcome with `Addresses.tried`; discovery's reports go to
`Addresses.heard` and `Addresses.lose`, and `Addresses.given_up` says when to stop.
"""

from __future__ import annotations

__all__ = ["GIVE_UP_AFTER", "MAX_ADDRESSES", "Address", "Addresses"]

#: addresses a dial loop keeps besides the one where its device proved itself: enough for a
#: robot that moved and a forged record or two, bounded against a flood of them (DESIGN
#: invariant 5)
MAX_ADDRESSES = 4
#: failed attempts in a row at the proven address after which a loop whose device discovery
#: lost stops: with the backoff growing from 0.2 to 10 s, about 30 s (one re-announcement
#: period), enough for a Wi-Fi blip, and bounded for a robot that is really gone
GIVE_UP_AFTER = 8

Address = tuple[str, int]


class Addresses:
    """Every address heard for one device, and which one its dial loop connects to next.

    An mDNS record is a claim anyone on the LAN can make.  The loop used to dial only the last
    address heard, so one forged record naming the device and another address sent it there,
    failing every handshake, until the device announced itself again.  Now the address where a
    handshake last proved the device (`proven`) gets every other attempt, whatever is heard
    meanwhile, and the other attempts go round the rest, the most recently heard first.  The
    price: a robot that moved is reached one failed attempt at its old address later.

    A goodbye is a claim too: anyone can send one under the device's name.  So when discovery
    loses the device (`lose`), the proven address is still dialed, until it has failed
    `GIVE_UP_AFTER` times in a row (`given_up`).
    """

    def __init__(self, address: Address) -> None:
        self.proven: Address | None = None
        self.others: list[Address] = [address]  #: the most recently heard first
        self._proven_next = False
        self.lost = False  #: discovery lost the device, and has not heard it since
        self.failures = 0  #: failed attempts in a row (from 0 again when the device is lost)

    def heard(self, address: Address) -> None:
        """Discovery reports the device at ``address``: try it before the other unproven ones."""
        self.lost = False
        if address != self.proven:
            self._put(address, first=True)

    def lose(self) -> bool:
        """Discovery lost the device (a goodbye, real or forged): forget the addresses heard and
        dial only the proven one from now on.  False if there is none: nothing is left to dial."""
        if self.proven is None:
            return False
        self.others.clear()
        self.lost, self.failures, self._proven_next = True, 0, True
        return True

    @property
    def given_up(self) -> bool:
        """The device was lost, and its proven address failed `GIVE_UP_AFTER` times in a row."""
        return self.lost and self.failures >= GIVE_UP_AFTER

    def next(self) -> Address:
        """The address to dial next."""
        if self.proven is not None and (self._proven_next or not self.others):
            return self.proven
        return self.others[0]

    def tried(self, address: Address, *, proved: bool) -> None:
        """After an attempt at ``address``: ``proved`` if its handshake authenticated the device."""
        self.failures = 0 if proved else self.failures + 1
        if proved:
            if self.proven is not None and self.proven != address:
                self._put(self.proven, first=False)
            if address in self.others:
                self.others.remove(address)
            self.proven, self._proven_next = address, True
        elif address == self.proven:  # not there now: try what else was heard
            self._proven_next = False
        else:  # nobody there, or somebody else: its turn is over, the proven address is next
            if address in self.others:
                self._put(address, first=False)
            self._proven_next = True

    def _put(self, address: Address, *, first: bool) -> None:
        if address in self.others:
            self.others.remove(address)
        self.others.insert(0 if first else len(self.others), address)
        del self.others[MAX_ADDRESSES:]

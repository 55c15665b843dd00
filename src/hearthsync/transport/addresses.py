"""Where a dial loop looks for its device: every address heard for it, and which one next.

Sans-I/O (STYLE §1): no sockets, no clock.  `SyncService` asks `Addresses.next` before each
attempt and reports the outcome with `Addresses.tried`; discovery's reports go to
`Addresses.heard`.
"""

from __future__ import annotations

__all__ = ["MAX_ADDRESSES", "Address", "Addresses"]

#: addresses a dial loop keeps besides the one where its device proved itself: enough for a
#: robot that moved and a forged record or two, bounded against a flood of them (DESIGN
#: invariant 5)
MAX_ADDRESSES = 4

Address = tuple[str, int]


class Addresses:
    """Every address heard for one device, and which one its dial loop connects to next.

    An mDNS record is a claim anyone on the LAN can make.  The loop used to dial only the last
    address heard, so one forged record naming the device and another address sent it there,
    failing every handshake, until the device announced itself again.  Now the address where a
    handshake last proved the device (`proven`) gets every other attempt, whatever is heard
    meanwhile, and the other attempts go round the rest, the most recently heard first.  The
    price: a robot that moved is reached one failed attempt at its old address later.
    """

    def __init__(self, address: Address) -> None:
        self.proven: Address | None = None
        self.others: list[Address] = [address]  #: the most recently heard first
        self._proven_next = False

    def heard(self, address: Address) -> None:
        """Discovery reports the device at ``address``: try it before the other unproven ones."""
        if address != self.proven:
            self._put(address, first=True)

    def next(self) -> Address:
        """The address to dial next."""
        if self.proven is not None and (self._proven_next or not self.others):
            return self.proven
        return self.others[0]

    def tried(self, address: Address, *, proved: bool) -> None:
        """After an attempt at ``address``: ``proved`` if its handshake authenticated the device."""
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

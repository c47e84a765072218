"""Drive a NIC's key-install API from aioquic connections (the `OffloadController` the relay hands each connection).

Per connection it keeps the current 1-RTT secret of each direction and the flows it installed, so CID changes and
key updates become exact install / rekey / remove calls:

- RX flows are keyed by every connection ID the host issued; each gets the current phase and, ahead of time, the
  next phase ("quic ku", RFC 9001 section 6.1), because the peer may switch phase with any packet and the NIC must
  decrypt it before the host learns of the switch. Exception: after a LOCAL key update the other slot keeps the
  previous phase (the peer still uses it until our first new-phase packet reaches it) and the next phase is put
  ahead only when the host reports the peer's first packet in the new phase (trigger "peer_confirmed").
- The TX flow is keyed by the peer CID in use; a local key update rekeys it before the first packet of the new
  phase leaves (aioquic updates its keys inside `encrypt_packet`, which triggers our callback first).
- When the NIC refuses (a full table, an unsupported suite) the connection simply stays on software crypto:
  `install_keys` returns False and nothing is lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from crypto_offload.aioquic_offload import OffloadedQuicConnection, OneRttKeys
from crypto_offload.api import (
    Direction,
    FlowKey,
    KeyInstaller,
    KeyInstallError,
    key_install_from_secret,
    next_rekey,
    rekey_from_secret,
)

log = logging.getLogger("crypto_offload.controller")


@dataclass
class _ConnectionKeys:
    rx: OneRttKeys | None = None
    tx: OneRttKeys | None = None
    rx_cids: set[bytes] = field(default_factory=set)
    tx_cid: bytes | None = None


@dataclass
class ControllerStats:
    installs: int = 0
    rekeys: int = 0
    removes: int = 0
    refusals: int = 0


class NicOffloadController:
    """One per relay process: maps every offloaded connection's key and CID events onto a KeyInstaller."""

    def __init__(self, installer: KeyInstaller) -> None:
        self.installer = installer
        self.stats = ControllerStats()
        self._conns: dict[int, _ConnectionKeys] = {}

    def _state(self, conn: OffloadedQuicConnection) -> _ConnectionKeys:
        return self._conns.setdefault(id(conn), _ConnectionKeys())

    # --- OffloadController ------------------------------------------------------------------------------------

    def install_keys(self, conn: OffloadedQuicConnection, keys: OneRttKeys) -> bool:
        state = self._state(conn)
        try:
            if keys.direction is Direction.RX:
                first = state.rx is None or keys.trigger == "tls"
                state.rx = keys
                if first:
                    for cid in sorted(state.rx_cids):
                        self._install_rx(conn, cid, keys)
                elif keys.trigger == "local_update":
                    # Our own update: the peer keeps sending the previous phase until it sees our first packet of
                    # the new one, so that phase's slot stays (RFC 9001 6.5). The new phase is normally the key
                    # installed ahead already; writing it again is exact. The next phase goes ahead only once the
                    # peer has switched ("peer_confirmed"), before it can start another update (RFC 9001 6.2).
                    for cid in sorted(state.rx_cids):
                        self.installer.rekey(FlowKey(Direction.RX, cid),
                                             rekey_from_secret(keys.cipher_suite, keys.secret, keys.key_phase))
                        self.stats.rekeys += 1
                else:
                    # "remote_update" (the peer switched: the NIC already decrypts the new phase, installed ahead)
                    # or "peer_confirmed" (the peer answered our update): prepare the phase after it.
                    for cid in sorted(state.rx_cids):
                        self._rekey_rx_ahead(cid, keys)
            else:
                first = state.tx is None or keys.trigger == "tls"
                state.tx = keys
                if state.tx_cid is not None:
                    if first:
                        self._install_tx(conn, state.tx_cid, keys)
                    else:
                        self.installer.rekey(FlowKey(Direction.TX, state.tx_cid),
                                             rekey_from_secret(keys.cipher_suite, keys.secret, keys.key_phase))
                        self.stats.rekeys += 1
        except KeyInstallError as exc:
            self.stats.refusals += 1
            log.warning("NIC refused %s keys (%s): this connection stays on software crypto", keys.direction.value, exc)
            return False
        return True

    def update_cids(self, conn: OffloadedQuicConnection, host_cids: frozenset[bytes], peer_cid: bytes) -> None:
        state = self._state(conn)
        try:
            for cid in sorted(host_cids - state.rx_cids):
                if state.rx is not None:
                    self._install_rx(conn, cid, state.rx)
            for cid in sorted(state.rx_cids - host_cids):
                self._remove(FlowKey(Direction.RX, cid))
            state.rx_cids = set(host_cids)
            if peer_cid != state.tx_cid:
                if state.tx_cid is not None:
                    self._remove(FlowKey(Direction.TX, state.tx_cid))
                state.tx_cid = peer_cid
                if state.tx is not None:
                    self._install_tx(conn, peer_cid, state.tx)
        except KeyInstallError as exc:
            self.stats.refusals += 1
            log.warning("NIC refused a connection-ID change (%s); packets on it use software crypto", exc)

    def release(self, conn: OffloadedQuicConnection) -> None:
        state = self._conns.pop(id(conn), None)
        if state is None:
            return
        for cid in state.rx_cids:
            self._remove(FlowKey(Direction.RX, cid))
        if state.tx_cid is not None:
            self._remove(FlowKey(Direction.TX, state.tx_cid))

    def connections(self) -> int:
        return len(self._conns)

    # --- key-install calls ------------------------------------------------------------------------------------

    def _install_rx(self, conn: OffloadedQuicConnection, cid: bytes, keys: OneRttKeys) -> None:
        flow = FlowKey(Direction.RX, cid)
        self.installer.install(flow, key_install_from_secret(keys.cipher_suite, keys.secret, key_phase=keys.key_phase,
                                                              largest_pn=conn.offload_largest_rx_pn()))
        self.stats.installs += 1
        self._rekey_rx_ahead(cid, keys)

    def _rekey_rx_ahead(self, cid: bytes, keys: OneRttKeys) -> None:
        _, ahead = next_rekey(keys.cipher_suite, keys.secret, keys.key_phase)
        self.installer.rekey(FlowKey(Direction.RX, cid), ahead)
        self.stats.rekeys += 1

    def _install_tx(self, conn: OffloadedQuicConnection, cid: bytes, keys: OneRttKeys) -> None:
        self.installer.install(FlowKey(Direction.TX, cid),
                               key_install_from_secret(keys.cipher_suite, keys.secret, key_phase=keys.key_phase,
                                                       next_pn=conn.offload_next_tx_pn()))
        self.stats.installs += 1

    def _remove(self, flow: FlowKey) -> None:
        if self.installer.remove(flow):
            self.stats.removes += 1

/**
 * Why a packet was dropped. Codecs return these codes instead of throwing, and the
 * forwarder counts them in a typed array indexed by the code (see src/dataplane/stats.ts).
 * Lives in encap (the lowest layer that produces them) so that encap imports nothing above it.
 */
export const DropReason = {
  /** Not a drop: the packet is fine. */
  none: 0,
  /** IPv4 header invalid: IHL < 5, header or total length beyond the data, bad header checksum. */
  malformed: 1,
  /** IP version is not 4 (IPv6, garbage). */
  notIpv4: 2,
  /** TTL was 0 or 1 and forwarding would take it to 0. */
  ttlExpired: 3,
  /** No peer owns the destination (an ICMP net unreachable may have been sent). */
  noRoute: 4,
  /** Datagram shorter than the encapsulation header (vxlan: 8 + 14 bytes). */
  truncated: 5,
  /** VXLAN header without the I flag. */
  badVxlanFlags: 6,
  /** VXLAN VNI is not ours. */
  wrongVni: 7,
  /** Inner Ethernet destination is not our VTEP MAC (broadcast/multicast included). */
  wrongMac: 8,
  /** Inner EtherType is not IPv4 (ARP, VLAN tags, IPv6). */
  wrongEtherType: 9,
  /** Outer sender is not a known peer's public IP (and port, when the port is fixed). */
  unknownPeer: 10,
  /** Inner source is outside the sending peer's subnet. */
  spoofedSource: 11,
  /** Inner destination is outside our subnet. */
  notForUs: 12,
  /** The TUN device refused the packet. */
  tunWrite: 13,
  /** The socket did not send the datagram. */
  send: 14,
  /** The peer has no VTEP MAC (vxlan) so the frame cannot be addressed. */
  noPeerMac: 15,
} as const;

export type DropReason = (typeof DropReason)[keyof typeof DropReason];

/** Number of codes (size of per-reason counter arrays). */
export const DROP_REASON_COUNT = 16;

/** Names indexed by code, for metrics and status output. */
export const DROP_REASON_NAMES: readonly string[] = (() => {
  const names: string[] = new Array<string>(DROP_REASON_COUNT).fill('');
  for (const [name, code] of Object.entries(DropReason)) names[code] = name;
  return names;
})();

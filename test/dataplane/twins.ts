/**
 * Two nodes A and B on a MemoryNetwork, each a Forwarder over a MemoryTun and MemoryConn,
 * for the forwarder tests (udp or vxlan).
 */
import { MemoryNetwork } from '../../src/conn/memory-conn.ts';
import type { MemoryConn } from '../../src/conn/memory-conn.ts';
import { createEncap } from '../../src/encap/encap.ts';
import type { Encap } from '../../src/encap/encap.ts';
import { Forwarder } from '../../src/dataplane/forwarder.ts';
import type { ForwarderOptions } from '../../src/dataplane/forwarder.ts';
import type { Peer } from '../../src/dataplane/peer.ts';
import { cidrToKey, parseCidr } from '../../src/routing/ipv4.ts';
import type { Ipv4Cidr } from '../../src/routing/ipv4.ts';
import { MemoryTun } from '../../src/tun/memory-tun.ts';
import { ip } from '../encap/packets.ts';

export type Kind = 'udp' | 'vxlan';

export interface Node {
  readonly name: string;
  readonly publicIp: number;
  readonly subnet: Ipv4Cidr;
  readonly tunAddr: number;
  readonly mac: Buffer;
  readonly tun: MemoryTun;
  readonly conn: MemoryConn;
  readonly encap: Encap;
  readonly fwd: Forwarder;
  /** This node as a peer of the other one. */
  readonly asPeer: Peer;
}

export const VNI = 7;

export function portFor(kind: Kind): number {
  return kind === 'udp' ? 8285 : 8472;
}

export type Tuning = Pick<
  ForwarderOptions,
  'tunBatchSize' | 'recvMessages' | 'maxBatchesPerTurn' | 'icmpForIcmpQueries' | 'busyPollUs' | 'busyPoller'
>;

export function makeNode(
  net: MemoryNetwork,
  kind: Kind,
  name: string,
  id: number,
  tuning: Tuning = {},
  mtu = 1400,
): Node {
  const n = id + 1;
  const publicIp = ip(`198.18.0.${n}`);
  const subnet = parseCidr(`10.244.${n}.0/24`);
  const tunAddr = subnet.addr;
  const mac = Buffer.from([0x02, 0, 0, 0, 0, n]);
  const port = portFor(kind);
  const tun = new MemoryTun({ name: `${name}-tun`, mtu });
  const conn = net.bind(publicIp, port);
  const encap =
    kind === 'udp' ? createEncap({ type: 'udp' }) : createEncap({ type: 'vxlan', vni: VNI, localMac: mac });
  const fwd = new Forwarder({ tun, conn, encap, local: { subnet, tunAddr, vtepMac: mac }, port, ...tuning });
  const asPeer: Peer = {
    id,
    subnet,
    publicIp,
    port: 0,
    vtepMac: kind === 'vxlan' ? mac : undefined,
    leaseKey: cidrToKey(subnet),
  };
  return { name, publicIp, subnet, tunAddr, mac, tun, conn, encap, fwd, asPeer };
}

/** Nodes A (id 0) and B (id 1), peered with each other and started. */
export function makePair(
  kind: Kind,
  tuning: Tuning = {},
): { net: MemoryNetwork; a: Node; b: Node; close: () => void } {
  const net = new MemoryNetwork();
  const a = makeNode(net, kind, 'A', 0, tuning);
  const b = makeNode(net, kind, 'B', 1, tuning);
  a.fwd.setPeers([b.asPeer]);
  b.fwd.setPeers([a.asPeer]);
  a.fwd.start();
  b.fwd.start();
  const close = (): void => {
    for (const x of [a, b]) {
      x.fwd.stop();
      x.tun.close();
      x.conn.close();
    }
  };
  return { net, a, b, close };
}

/** Resolves when `cond` holds, polling across event-loop turns; rejects after `ms`. */
export async function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error('timed out waiting for a condition');
    await new Promise<void>((r) => setImmediate(r));
  }
}

/** Lets queued readiness callbacks run for `turns` event-loop turns. */
export async function settle(turns = 10): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise<void>((r) => setImmediate(r));
}

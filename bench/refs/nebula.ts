/**
 * Outside reference: nebula (the Debian package), a userspace overlay with its own
 * certificates and Noise handshakes, set up without a lighthouse.
 *
 * A CA and one host certificate per node are made with nebula-cert in the cluster's temp
 * dir; node i gets overlay address 10.99.0.<i>/24 and a certificate that may serve its pod
 * subnet (10.244.<i>.0/24, `-subnets`). Each nebula listens on the node's underlay address,
 * finds its peers through a static host map, owns tun device neb1 (MTU 1400) in the node
 * namespace and routes the peers' pod subnets through it (`unsafe_routes` via the peer's
 * overlay address). The firewall allows everything: the bench measures forwarding, not
 * filtering. Pods come from the baseline plan behind cni0.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { formatCidr } from '../../src/routing/ipv4.ts';
import type { Cluster } from '../../src/netns/topology.ts';
import type { PathSpec } from '../../src/compare/paths.ts';
import { forwardersOf, recordForwarder, waitForForwarder } from './pids.ts';

const PORT = 4242;
const MTU = 1400;
const DEV = 'neb1';

function overlayIp(i: number): string {
  return `10.99.0.${i}`;
}

async function setup(cluster: Cluster): Promise<void> {
  const dir = join(cluster.dir, 'nebula');
  mkdirSync(dir, { recursive: true });
  const cert = (args: string[]): void => {
    execFileSync('nebula-cert', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  };
  cert(['ca', '-name', 'weft-bench', '-duration', '24h']);
  const procs = cluster.nodes.map((n) => {
    cert([
      'sign',
      '-name',
      n.name,
      '-ip',
      `${overlayIp(n.index)}/24`,
      '-subnets',
      formatCidr(cluster.baselineSubnet(n.index)),
      '-out-crt',
      `${n.name}.crt`,
      '-out-key',
      `${n.name}.key`,
    ]);
    const peers = cluster.nodes.filter((p) => p !== n);
    const any = { port: 'any', proto: 'any', host: 'any' };
    // JSON is YAML, which nebula reads.
    const config = {
      pki: { ca: join(dir, 'ca.crt'), cert: join(dir, `${n.name}.crt`), key: join(dir, `${n.name}.key`) },
      static_host_map: Object.fromEntries(
        peers.map((p) => [overlayIp(p.index), [`${p.underlayIp}:${PORT}`]]),
      ),
      lighthouse: { am_lighthouse: false, interval: 60, hosts: [] },
      listen: { host: n.underlayIp, port: PORT },
      punchy: { punch: false },
      relay: { am_relay: false, use_relays: false },
      tun: {
        disabled: false,
        dev: DEV,
        drop_local_broadcast: false,
        drop_multicast: false,
        tx_queue: 500,
        mtu: MTU,
        routes: [],
        unsafe_routes: peers.map((p) => ({
          route: formatCidr(cluster.baselineSubnet(p.index)),
          via: overlayIp(p.index),
          mtu: MTU,
        })),
      },
      logging: { level: 'warning', format: 'text' },
      firewall: {
        conntrack: { tcp_timeout: '12m', udp_timeout: '3m', default_timeout: '10m' },
        outbound: [any],
        inbound: [any],
      },
    };
    const file = join(dir, `${n.name}.yml`);
    writeFileSync(file, JSON.stringify(config, null, 2));
    const proc = cluster.run.spawn(n.ns, 'nebula', ['-config', file]);
    recordForwarder(cluster, proc.pid);
    return { n, proc };
  });
  for (const { n, proc } of procs) {
    await waitForForwarder(
      `nebula on ${n.name}`,
      proc,
      async () => (await cluster.run.ip(n.ns, 'route', 'show', 'dev', DEV).catch(() => '')).includes('10.'),
      20_000,
    );
  }
  for (const n of cluster.nodes) await cluster.attachPods(n, cluster.baselineInfo(n.index, MTU));
}

export const NEBULA_REF: PathSpec = {
  id: 'nebula',
  name: 'nebula (reference)',
  overheadBytes: 60,
  how: 'Debian nebula, static host map, unsafe_routes for pod subnets',
  userspace: true,
  setup,
  forwarderPids: forwardersOf,
};

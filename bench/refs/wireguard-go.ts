/**
 * Outside reference: plain wireguard-go (the Debian package), configured by hand the way an
 * operator would, without weftd. It shows what the userspace WireGuard implementation costs
 * on this machine, so the "weft wireguard" row can be read against it.
 *
 * Per node: wireguard-go runs in the node namespace with its own /run/wireguard (a tmpfs
 * mounted in the private mount namespace `ip netns exec` gives each command, since the
 * control socket directory is otherwise shared by every namespace), device wg0 with address
 * 10.244.<i>.0/32, MTU 1420, the pod Network routed into it, and one peer per other node
 * (allowed-ips its /24, endpoint its underlay address). Pods come from the baseline plan
 * (10.244.<i>.0/24 behind cni0).
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { formatCidr, formatIpv4 } from '../../src/routing/ipv4.ts';
import type { Cluster } from '../../src/netns/topology.ts';
import type { PathSpec } from '../../src/compare/paths.ts';
import { forwardersOf, recordForwarder, waitForForwarder } from './pids.ts';

const PORT = 51820;
const MTU = 1420;
const DEV = 'wg0';

/** Runs in the node namespace: $1 address, $2 MTU, $3 pod Network, the rest `wg set` args. */
const SCRIPT = `set -e
addr=$1; mtu=$2; net=$3; shift 3
mkdir -p /run/wireguard
mount -t tmpfs weft-wgref /run/wireguard
wireguard-go -f ${DEV} &
echo "WGPID $!"
i=0
while [ ! -S /run/wireguard/${DEV}.sock ]; do
  i=$((i+1)); if [ $i -gt 400 ]; then echo "wireguard-go made no control socket"; exit 1; fi
  sleep 0.05
done
wg set ${DEV} "$@"
ip addr add "$addr/32" dev ${DEV}
ip link set ${DEV} mtu "$mtu" up
ip route add "$net" dev ${DEV}
echo READY
wait
`;

async function setup(cluster: Cluster): Promise<void> {
  const keys = cluster.nodes.map((n) => {
    const priv = execFileSync('wg', ['genkey'], { encoding: 'utf8' }).trim();
    const pub = execFileSync('wg', ['pubkey'], { input: priv, encoding: 'utf8' }).trim();
    const file = join(n.dir, 'wg.key');
    writeFileSync(file, `${priv}\n`, { mode: 0o600 });
    return { file, pub };
  });
  const procs = cluster.nodes.map((n, i) => {
    const peers = cluster.nodes.flatMap((p, j) =>
      p === n
        ? []
        : [
            'peer',
            keys[j]?.pub ?? '',
            'allowed-ips',
            formatCidr(cluster.baselineSubnet(p.index)),
            'endpoint',
            `${p.underlayIp}:${PORT}`,
          ],
    );
    const args = [
      formatIpv4(cluster.baselineSubnet(n.index).addr),
      String(MTU),
      formatCidr(cluster.network),
      'listen-port',
      String(PORT),
      'private-key',
      keys[i]?.file ?? '',
      ...peers,
    ];
    const proc = cluster.run.spawn(n.ns, 'sh', ['-c', SCRIPT, 'sh', ...args], {
      env: { ...process.env, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: '1', LOG_LEVEL: 'error' },
    });
    recordForwarder(cluster, proc.pid);
    return { n, proc };
  });
  for (const { n, proc } of procs) {
    await waitForForwarder(`wireguard-go on ${n.name}`, proc, () => proc.output().includes('READY'), 20_000);
  }
  for (const n of cluster.nodes) await cluster.attachPods(n, cluster.baselineInfo(n.index, MTU));
}

export const WIREGUARD_GO_REF: PathSpec = {
  id: 'wireguard-go',
  name: 'wireguard-go (reference)',
  overheadBytes: 60,
  how: 'Debian wireguard-go configured by hand with wg (no weftd)',
  userspace: true,
  setup,
  forwarderPids: forwardersOf,
};

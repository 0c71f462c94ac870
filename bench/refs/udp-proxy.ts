/**
 * Outside reference: bench/refs/udp-proxy.c, a one-packet-per-system-call C forwarder of
 * flannel's udp proxy design and wire format (IPv4 packet as the UDP payload, port 8285),
 * built here with the system C compiler. Issue #6 measures weft udp against this design
 * ("at least 8x a one-packet-per-syscall C forwarder"), so it runs on the same topology in
 * the same bench run.
 *
 * Per node: the proxy in the node namespace on TUN fp0 with 10.244.<i>.0/32, MTU underlay -
 * 28, the pod Network routed into it, and one `subnet=peer` argument per other node. Pods
 * come from the baseline plan (10.244.<i>.0/24 behind cni0). startUdpProxy runs one such node
 * with any subnet (the tests use it as a flannel udp peer of weftd).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { formatCidr, formatIpv4 } from '../../src/routing/ipv4.ts';
import type { Ipv4Cidr } from '../../src/routing/ipv4.ts';
import type { SpawnedProcess } from '../../src/netns/netns.ts';
import type { Cluster, ClusterNode } from '../../src/netns/topology.ts';
import type { PathSpec } from '../../src/compare/paths.ts';
import { projectRoot } from '../../src/util/self.ts';
import { forwardersOf, recordForwarder, waitForForwarder } from './pids.ts';

const PORT = 8285;
const DEV = 'fp0';
const SOURCE = join(projectRoot, 'bench', 'refs', 'udp-proxy.c');
const BINARY = join(projectRoot, '.weft-run', 'bench', 'udp-proxy');

/** Compiles the proxy unless the binary is newer than its source. */
function build(): string {
  if (!existsSync(BINARY) || statSync(BINARY).mtimeMs < statSync(SOURCE).mtimeMs) {
    mkdirSync(join(projectRoot, '.weft-run', 'bench'), { recursive: true });
    execFileSync('cc', ['-O2', '-Wall', '-o', BINARY, SOURCE], { stdio: 'inherit' });
  }
  return BINARY;
}

/** Starts the proxy on `node` (TUN fp0, no device set-up yet); `peers` are "cidr=ip". */
function spawnProxy(cluster: Cluster, node: ClusterNode, peers: readonly string[]): SpawnedProcess {
  const proc = cluster.run.spawn(node.ns, build(), [DEV, String(PORT), ...peers]);
  recordForwarder(cluster, proc.pid);
  return proc;
}

/** Waits for the proxy, gives fp0 the subnet's address, MTU and the Network; attaches pods. */
async function finishNode(
  cluster: Cluster,
  node: ClusterNode,
  proc: SpawnedProcess,
  subnet: Ipv4Cidr,
): Promise<void> {
  const mtu = cluster.underlayMtu - 28;
  await waitForForwarder(`udp-proxy on ${node.name}`, proc, () => proc.output().includes('READY'), 10_000);
  await cluster.run.ip(node.ns, 'addr', 'add', `${formatIpv4(subnet.addr)}/32`, 'dev', DEV);
  await cluster.run.ip(node.ns, 'link', 'set', DEV, 'mtu', String(mtu), 'up');
  await cluster.run.ip(node.ns, 'route', 'add', formatCidr(cluster.network), 'dev', DEV);
  const info = { network: cluster.network, subnet, gateway: (subnet.addr + 1) >>> 0, mtu, ipMasq: false };
  await cluster.attachPods(node, info);
}

/**
 * One node of flannel's udp design: the proxy on `node` for pod subnet `subnet`, sending to
 * `peers` ({subnet, ip} each), pods attached behind cni0. Stopped by cluster.destroy().
 */
export async function startUdpProxy(
  cluster: Cluster,
  node: ClusterNode,
  subnet: Ipv4Cidr,
  peers: readonly { subnet: Ipv4Cidr; ip: string }[],
): Promise<SpawnedProcess> {
  const proc = spawnProxy(
    cluster,
    node,
    peers.map((p) => `${formatCidr(p.subnet)}=${p.ip}`),
  );
  await finishNode(cluster, node, proc, subnet);
  return proc;
}

async function setup(cluster: Cluster): Promise<void> {
  const procs = cluster.nodes.map((n) => {
    const peers = cluster.nodes
      .filter((p) => p !== n)
      .map((p) => `${formatCidr(cluster.baselineSubnet(p.index))}=${p.underlayIp}`);
    return { n, proc: spawnProxy(cluster, n, peers) };
  });
  for (const { n, proc } of procs) await finishNode(cluster, n, proc, cluster.baselineSubnet(n.index));
}

export const UDP_PROXY_REF: PathSpec = {
  id: 'udp-proxy',
  name: 'C udp proxy, 1 packet/syscall (reference)',
  overheadBytes: 28,
  how: "bench/refs/udp-proxy.c: flannel's udp proxy design and wire format, one packet per system call",
  userspace: true,
  setup,
  forwarderPids: forwardersOf,
};

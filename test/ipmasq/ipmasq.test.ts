/**
 * ip-masq: the rendered nftables table, and real NAT behaviour in network namespaces:
 * pod -> outside is masqueraded, pod -> pod is not, kube-proxy-marked traffic is not,
 * rules disappear on stop and come back on resync.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IpMasq, renderMasqTable, IPMASQ_TABLE } from '../../src/ipmasq/ipmasq.ts';
import { parseCidr } from '../../src/routing/ipv4.ts';
import { NetnsRun } from '../../src/netns/netns.ts';
import type { SpawnedProcess } from '../../src/netns/netns.ts';
import { setTimeout as sleep } from 'node:timers/promises';

const network = parseCidr('10.244.0.0/16');
const subnet = parseCidr('10.244.3.0/24');

void test('renders the flannel masquerade policy as one nftables table', () => {
  const t = renderMasqTable(network, subnet);
  assert.match(t, /^table ip weft \{/);
  assert.match(t, /meta mark & 0x4000 == 0x4000 return/);
  assert.match(t, /ip saddr 10\.244\.0\.0\/16 ip daddr 10\.244\.0\.0\/16 return/);
  assert.match(t, /ip saddr != 10\.244\.0\.0\/16 ip daddr 10\.244\.3\.0\/24 return/);
  assert.match(t, /ip saddr 10\.244\.0\.0\/16 ip daddr != 224\.0\.0\.0\/4 masquerade fully-random/);
  assert.match(t, /ip saddr != 10\.244\.0\.0\/16 ip daddr 10\.244\.0\.0\/16 masquerade fully-random/);
  assert.match(t, /ip saddr 10\.244\.0\.0\/16 accept/);
  assert.match(t, /ip daddr 10\.244\.0\.0\/16 accept/);
  // Order matters: the returns come before the masquerades.
  assert.ok(t.indexOf('0x4000 return') < t.indexOf('masquerade'));
});

const SERVER = `const net=require('net');for(const p of [7000,7001]){net.createServer(s=>{console.log(p+' '+s.remoteAddress);s.end()}).listen(p,'0.0.0.0',()=>console.log('listening '+p))}`;
const CLIENT = `const [h,p]=process.argv.slice(1);const s=require('net').connect(+p,h);s.on('data',()=>{});s.on('close',()=>process.exit(0));s.on('error',e=>{console.error(e.message);process.exit(1)});setTimeout(()=>process.exit(2),5000)`;

async function waitFor(fn: () => boolean, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > until) throw new Error('timed out');
    await sleep(20);
  }
}

void test('masquerades pod traffic leaving the Network, and only that (netns)', async (t) => {
  const r = new NetnsRun();
  t.after(() => r.destroy());
  const node = await r.addNamespace('node');
  const pod = await r.addNamespace('pod');
  const outside = await r.addNamespace('out');
  const remote = await r.addNamespace('remote');
  await r.exec(node, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  // pod 10.244.3.10 behind the node
  await r.addVeth(node, 'vpod', pod, 'eth0');
  await r.ip(node, 'addr', 'add', '10.244.3.1/24', 'dev', 'vpod');
  await r.ip(pod, 'addr', 'add', '10.244.3.10/24', 'dev', 'eth0');
  await r.ip(pod, 'route', 'add', 'default', 'via', '10.244.3.1');
  // an outside host 203.0.113.2, which knows the way back to pods (to see un-NATed sources)
  await r.addVeth(node, 'vout', outside, 'eth0');
  await r.ip(node, 'addr', 'add', '203.0.113.1/24', 'dev', 'vout');
  await r.ip(outside, 'addr', 'add', '203.0.113.2/24', 'dev', 'eth0');
  await r.ip(outside, 'route', 'add', '10.244.0.0/16', 'via', '203.0.113.1');
  // a pod on another node: 10.244.5.10 reached via 198.18.0.2
  await r.addVeth(node, 'vrem', remote, 'eth0');
  await r.ip(node, 'addr', 'add', '198.18.0.1/24', 'dev', 'vrem');
  await r.ip(remote, 'addr', 'add', '198.18.0.2/24', 'dev', 'eth0');
  await r.ip(remote, 'addr', 'add', '10.244.5.10/32', 'dev', 'lo');
  await r.ip(remote, 'route', 'add', '10.244.0.0/16', 'via', '198.18.0.1');
  await r.ip(node, 'route', 'add', '10.244.5.0/24', 'via', '198.18.0.2');
  // kube-proxy-style mark on traffic to port 7001
  await r.exec(node, 'nft', ['-f', '-'], {
    input:
      'table ip marktest {\n chain pre { type filter hook prerouting priority mangle; tcp dport 7001 meta mark set 0x4000; }\n}\n',
  });

  const servers: SpawnedProcess[] = [
    r.spawn(outside, process.execPath, ['-e', SERVER]),
    r.spawn(remote, process.execPath, ['-e', SERVER]),
  ];
  await waitFor(() => servers.every((s) => (s.output().match(/listening/g) ?? []).length === 2));
  let seenCount = 0;
  const seen = async (server: SpawnedProcess, host: string, port: number): Promise<string> => {
    await r.exec(pod, process.execPath, ['-e', CLIENT, host, String(port)]);
    seenCount++;
    const want = seenCount;
    await waitFor(
      () =>
        servers.reduce(
          (n, s) =>
            n +
            s
              .output()
              .split('\n')
              .filter((l) => /^700\d /.test(l)).length,
          0,
        ) >= want,
    );
    const lines = server
      .output()
      .trim()
      .split('\n')
      .filter((l) => /^700\d /.test(l));
    return (lines[lines.length - 1] ?? '').split(' ')[1] ?? '';
  };
  const [out, rem] = servers as [SpawnedProcess, SpawnedProcess];

  // Without rules: no NAT anywhere.
  assert.equal(await seen(out, '203.0.113.2', 7000), '10.244.3.10');

  const masq = new IpMasq({ network, subnet, netns: node, resyncMs: 0 });
  await masq.start();
  const listed = await r.exec(node, 'nft', ['list', 'table', 'ip', IPMASQ_TABLE]);
  assert.match(listed, /masquerade fully-random/);

  assert.equal(await seen(out, '203.0.113.2', 7000), '203.0.113.1', 'pod -> outside is masqueraded');
  assert.equal(await seen(rem, '10.244.5.10', 7000), '10.244.3.10', 'pod -> pod keeps its source');
  assert.equal(
    await seen(out, '203.0.113.2', 7001),
    '10.244.3.10',
    'kube-proxy-marked traffic is left alone',
  );

  // Someone deletes our table: resync puts it back.
  await r.exec(node, 'nft', ['delete', 'table', 'ip', IPMASQ_TABLE]);
  assert.equal(await masq.resync(), true);
  assert.equal(masq.resyncs, 1);
  assert.equal(await masq.resync(), false, 'nothing to do when the table is intact');
  assert.equal(await seen(out, '203.0.113.2', 7000), '203.0.113.1');

  await masq.stop();
  await assert.rejects(r.exec(node, 'nft', ['list', 'table', 'ip', IPMASQ_TABLE]));
  assert.equal(await seen(out, '203.0.113.2', 7000), '10.244.3.10', 'no NAT after stop');
  await masq.stop(); // idempotent
});

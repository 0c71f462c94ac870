/**
 * deploy/: every manifest validates against the Kubernetes OpenAPI schemas
 * (kubernetes-models), and carries what weftd needs on a node (host network, NET_ADMIN,
 * /dev/net/tun, /run/weft and the CNI directories, RBAC for nodes and nodes/status).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { ClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import { ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';
import { projectRoot } from '../../src/util/self.ts';

type Obj = Record<string, unknown> & { apiVersion: string; kind: string; metadata: { name: string } };

const models: Record<string, new (o: never) => { validate(): void }> = {
  'v1/Namespace': Namespace,
  'v1/ServiceAccount': ServiceAccount,
  'v1/ConfigMap': ConfigMap,
  'apps/v1/DaemonSet': DaemonSet,
  'rbac.authorization.k8s.io/v1/ClusterRole': ClusterRole,
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': ClusterRoleBinding,
};

const deployDir = join(projectRoot, 'deploy');
const objects: Obj[] = [];
for (const f of readdirSync(deployDir).filter((n) => n.endsWith('.yaml'))) {
  for (const doc of parseAllDocuments(readFileSync(join(deployDir, f), 'utf8'))) {
    assert.equal(doc.errors.length, 0, `${f}: ${doc.errors.map((e) => e.message).join('; ')}`);
    const o = doc.toJS() as Obj | null;
    if (o) objects.push(o);
  }
}
const find = (kind: string): Obj => {
  const o = objects.find((x) => x.kind === kind);
  assert.ok(o, `deploy/ has a ${kind}`);
  return o;
};

void test('every manifest validates against its Kubernetes schema', () => {
  assert.ok(objects.length >= 6);
  for (const o of objects) {
    const Model = models[`${o.apiVersion}/${o.kind}`];
    assert.ok(Model, `no schema model for ${o.apiVersion} ${o.kind}`);
    assert.doesNotThrow(() => new Model(o as never).validate(), `${o.kind}/${o.metadata.name}`);
  }
});

void test('the schema check catches a broken manifest', () => {
  const ds = structuredClone(find('DaemonSet')) as unknown as {
    spec: { template: { spec: { hostNetwork: unknown } } };
  };
  ds.spec.template.spec.hostNetwork = 'yes';
  assert.throws(() => new DaemonSet(ds as never).validate(), /hostNetwork/);
});

void test('RBAC grants exactly what weftd uses: nodes get/list/watch and nodes/status patch', () => {
  const role = find('ClusterRole') as unknown as { rules: { resources: string[]; verbs: string[] }[] };
  const grants = new Set(
    role.rules.flatMap((r) => r.resources.flatMap((res) => r.verbs.map((v) => `${res}:${v}`))),
  );
  assert.deepEqual([...grants].sort(), ['nodes/status:patch', 'nodes:get', 'nodes:list', 'nodes:watch']);
  const binding = find('ClusterRoleBinding') as unknown as {
    subjects: { name: string }[];
    roleRef: { name: string };
  };
  const ds = find('DaemonSet') as unknown as { spec: { template: { spec: { serviceAccountName: string } } } };
  assert.equal(binding.roleRef.name, (role as unknown as Obj).metadata.name);
  assert.equal(binding.subjects[0]?.name, ds.spec.template.spec.serviceAccountName);
});

void test('the DaemonSet runs weftd on the host network with what the data path needs', () => {
  const ds = find('DaemonSet') as unknown as {
    spec: {
      template: {
        spec: {
          hostNetwork: boolean;
          containers: {
            args: string[];
            securityContext: { capabilities: { add: string[] } };
            volumeMounts: { name: string; mountPath: string }[];
          }[];
          volumes: { name: string; hostPath?: { path: string } }[];
        };
      };
    };
  };
  const pod = ds.spec.template.spec;
  assert.equal(pod.hostNetwork, true);
  const c = pod.containers[0];
  assert.ok(c);
  assert.deepEqual([...c.securityContext.capabilities.add].sort(), ['NET_ADMIN', 'NET_RAW']);
  const hostPaths = new Set(pod.volumes.map((v) => v.hostPath?.path).filter(Boolean));
  for (const p of ['/dev/net/tun', '/run/weft', '/opt/cni/bin', '/etc/cni/net.d'])
    assert.ok(hostPaths.has(p), p);
  assert.ok(c.args.includes('--lease-store=kube'));
  // The plugin is installed from inside the container: it must bring its own node and name
  // it by the host's path, or every pod ADD on a host without Node.js would fail.
  assert.ok(c.args.includes('--install-cni'));
  assert.ok(c.args.includes('--cni-bundle-node'));
  assert.ok(c.args.includes('--cni-host-bin-dir=/opt/cni/bin'));
  for (const m of c.volumeMounts)
    assert.ok(
      pod.volumes.some((v) => v.name === m.name),
      `volume ${m.name}`,
    );
});

void test('the ConfigMap carries a valid net-conf.json and a weft-cni + portmap conflist', () => {
  const cm = find('ConfigMap') as unknown as { data: Record<string, string> };
  const net = JSON.parse(cm.data['net-conf.json'] ?? '') as { Network: string; Backend: { Type: string } };
  assert.match(net.Network, /^\d+\.\d+\.\d+\.\d+\/\d+$/);
  assert.ok(['udp', 'vxlan', 'host-gw'].includes(net.Backend.Type));
  const conf = JSON.parse(cm.data['cni-conf.json'] ?? '') as {
    cniVersion: string;
    plugins: { type: string }[];
  };
  assert.equal(conf.cniVersion, '1.1.0');
  assert.deepEqual(
    conf.plugins.map((p) => p.type),
    ['weft-cni', 'portmap'],
  );
});

/**
 * Per-interface IPv4 sysctls, written through /proc/sys of the current network namespace.
 *
 * The userspace backends need `accept_local` on their TUN device: the ICMP net-unreachable
 * a forwarder writes back into the TUN carries the TUN's own address as its source, and
 * the kernel drops packets arriving with a local source address unless accept_local is on.
 */
import { writeFileSync } from 'node:fs';
import { KernelError } from '../util/errors.ts';

export function setInterfaceSysctl(iface: string, key: string, value: string): void {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(iface) || !/^[a-z_]+$/.test(key)) {
    throw new KernelError(`bad sysctl target ${iface}/${key}`);
  }
  const path = `/proc/sys/net/ipv4/conf/${iface}/${key}`;
  try {
    writeFileSync(path, value);
  } catch (err) {
    throw new KernelError(`cannot set ${path} = ${value}: ${(err as Error).message}`, { cause: err });
  }
}

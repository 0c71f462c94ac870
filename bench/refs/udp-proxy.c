/*
 * Outside reference for bench/run.ts: a userspace udp overlay forwarder of flannel's udp
 * proxy design, written for the benchmark (not flannel's code): one thread, poll() on a
 * TUN device and a UDP socket, ONE packet per system call each way. The wire format is
 * flannel's (the raw inner IPv4 packet as the UDP payload), so it shows what the per-packet
 * design costs next to weft udp's batches and offloads on the same topology.
 *
 *   udp-proxy <tun-name> <port> <subnet/prefix=peer-ip> ...
 *
 * TUN -> socket: read one packet, drop it unless IPv4 with TTL > 1, decrement TTL (RFC 1624
 * incremental checksum), find the peer whose subnet holds the destination (linear scan:
 * the bench has two nodes), sendto(peer:port). Socket -> TUN: recvfrom one datagram,
 * decrement TTL the same way, write it to the TUN. The TUN is a plain IFF_TUN|IFF_NO_PI
 * device; the caller sets its address, MTU and route with ip(8).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_PEERS 64
#define BUF 65536

struct peer {
  uint32_t net, mask;
  struct sockaddr_in addr;
};

static int dec_ttl(uint8_t *p, ssize_t n) {
  if (n < 20 || (p[0] >> 4) != 4 || p[8] <= 1) return 0;
  /* RFC 1624: HC' = ~(~HC + ~m + m'), m = the 16-bit word holding TTL. */
  uint32_t old = ((uint32_t)p[8] << 8) | p[9];
  p[8]--;
  uint32_t nw = ((uint32_t)p[8] << 8) | p[9];
  uint32_t sum = (uint16_t)~(((uint32_t)p[10] << 8) | p[11]);
  sum += (uint16_t)~old;
  sum += nw;
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  uint16_t c = (uint16_t)~sum;
  p[10] = (uint8_t)(c >> 8);
  p[11] = (uint8_t)c;
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s <tun-name> <port> <subnet/prefix=peer-ip> ...\n", argv[0]);
    return 2;
  }
  struct peer peers[MAX_PEERS];
  int npeers = 0;
  int port = atoi(argv[2]);
  for (int i = 3; i < argc && npeers < MAX_PEERS; i++) {
    char spec[128];
    snprintf(spec, sizeof spec, "%s", argv[i]);
    char *slash = strchr(spec, '/'), *eq = strchr(spec, '=');
    if (!slash || !eq || eq < slash) {
      fprintf(stderr, "bad peer %s\n", argv[i]);
      return 2;
    }
    *slash = 0;
    *eq = 0;
    struct in_addr a, p;
    int prefix = atoi(slash + 1);
    if (!inet_aton(spec, &a) || !inet_aton(eq + 1, &p) || prefix < 0 || prefix > 32) {
      fprintf(stderr, "bad peer %s\n", argv[i]);
      return 2;
    }
    peers[npeers].mask = prefix ? htonl(~0u << (32 - prefix)) : 0;
    peers[npeers].net = a.s_addr & peers[npeers].mask;
    memset(&peers[npeers].addr, 0, sizeof peers[npeers].addr);
    peers[npeers].addr.sin_family = AF_INET;
    peers[npeers].addr.sin_port = htons((uint16_t)port);
    peers[npeers].addr.sin_addr = p;
    npeers++;
  }

  int tun = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (tun < 0) {
    perror("open /dev/net/tun");
    return 1;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", argv[1]);
  if (ioctl(tun, TUNSETIFF, &ifr) < 0) {
    perror("TUNSETIFF");
    return 1;
  }
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in local;
  memset(&local, 0, sizeof local);
  local.sin_family = AF_INET;
  local.sin_port = htons((uint16_t)port);
  if (sock < 0 || bind(sock, (struct sockaddr *)&local, sizeof local) < 0) {
    perror("udp socket");
    return 1;
  }
  printf("READY\n");
  fflush(stdout);

  static uint8_t buf[BUF];
  unsigned long long fwd_out = 0, fwd_in = 0, dropped = 0;
  struct pollfd fds[2] = {{tun, POLLIN, 0}, {sock, POLLIN, 0}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      perror("poll");
      return 1;
    }
    if (fds[0].revents & POLLIN) {
      ssize_t n = read(tun, buf, sizeof buf);
      if (n > 0 && dec_ttl(buf, n)) {
        uint32_t dst;
        memcpy(&dst, buf + 16, 4);
        int k = 0;
        while (k < npeers && (dst & peers[k].mask) != peers[k].net) k++;
        if (k < npeers && sendto(sock, buf, (size_t)n, 0, (struct sockaddr *)&peers[k].addr, sizeof peers[k].addr) == n)
          fwd_out++;
        else
          dropped++;
      } else if (n > 0) {
        dropped++;
      }
    }
    if (fds[1].revents & POLLIN) {
      ssize_t n = recvfrom(sock, buf, sizeof buf, 0, NULL, NULL);
      if (n > 0 && dec_ttl(buf, n) && write(tun, buf, (size_t)n) == n)
        fwd_in++;
      else if (n > 0)
        dropped++;
    }
  }
}

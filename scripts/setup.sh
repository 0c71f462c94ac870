#!/usr/bin/env bash
# Installs everything weft's demo, tests and benchmarks need, idempotently:
# Debian packages, npm dependencies, the native addon and the compiled TypeScript.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2 iputils-ping iperf3 ethtool tcpdump tshark nftables sockperf
  etcd-server etcd-client
  containernetworking-plugins containerd runc busybox-static
  wireguard-tools wireguard-go nebula
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # tshark asks whether non-root users may capture; answer no without a prompt.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections || true
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# kubectl from Debian's kubernetes-client, unpacked privately (it clashes with other kubectl
# packages if installed): used only by the tests that check the test API server is faithful.
KUBECTL_DIR=".weft-run/kubectl"
if [ ! -x "$KUBECTL_DIR/usr/bin/kubectl" ]; then
  echo "setup: unpacking Debian kubernetes-client into $KUBECTL_DIR"
  mkdir -p "$KUBECTL_DIR/deb"
  ( cd "$KUBECTL_DIR/deb" && { apt-get download kubernetes-client >/dev/null 2>&1 || { apt-get update -qq && apt-get download kubernetes-client; }; } )
  dpkg -x "$KUBECTL_DIR"/deb/kubernetes-client_*.deb "$KUBECTL_DIR"
  rm -rf "$KUBECTL_DIR/deb"
fi

# npm dependencies: only when package-lock.json changed since the last install.
stamp="node_modules/.weft-lock-stamp"
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

# Native addon, compiled TypeScript, and the bundled CNI plugin.
node scripts/build-native.mjs
npx --no-install tsc -p tsconfig.build.json
node scripts/build-cni.mjs

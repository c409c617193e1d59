#!/usr/bin/env bash
# Builds the fleet-test images (both versions) from a static busybox root and pushes them to a registry.
# Usage: build.sh REGISTRY WORKDIR   (REGISTRY like 127.0.0.1:5000; env DOCKER = docker client to use)
# Normally run by ../up, which decides whether a rebuild is needed.
set -euo pipefail

registry=${1:?usage: build.sh REGISTRY WORKDIR}
work=${2:?usage: build.sh REGISTRY WORKDIR}
docker=${DOCKER:-docker}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
names=(web unhealthy crash memhog broker)
versions=(1 2)
export DOCKER_BUILDKIT=0 # legacy builder: no BuildKit daemon/frontend image needed (nothing can be pulled here)

busybox=/bin/busybox
if [[ ! -x $busybox ]]; then
  echo "build.sh: $busybox missing (install busybox-static)" >&2
  exit 1
fi

# Shared root file system: busybox + one symlink per applet, minimal /etc, /tmp, /www/version -> /version.
ctx=$work/base
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/rootfs/www"
cp "$busybox" "$ctx/rootfs/bin/busybox"
for applet in $("$busybox" --list); do
  [[ $applet == busybox ]] || ln -s busybox "$ctx/rootfs/bin/$applet"
done
cp "$here/base/fleet-httpd" "$ctx/rootfs/bin/fleet-httpd"
chmod 755 "$ctx/rootfs/bin/fleet-httpd"
# A static Unix-socket HTTP client for the agent's telemetry socket (busybox has none).
gcc -static -Os -s -o "$ctx/rootfs/bin/fleet-post" "$here/base/fleet-post.c"
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ctx/rootfs/etc/group"
chmod 1777 "$ctx/rootfs/tmp"
ln -s ../version "$ctx/rootfs/www/version"
cp "$here/base/Dockerfile" "$ctx/Dockerfile"

# broker: Debian's mosquitto binaries and every shared library they load, copied beside the
# Dockerfile (the registry-only machine cannot pull an eclipse-mosquitto image).
broker_ctx=$work/broker
rm -rf "$broker_ctx"
mkdir -p "$broker_ctx/rootfs"
cp "$here/broker/Dockerfile" "$here/broker/mosquitto.conf" "$broker_ctx/"
for bin in /usr/sbin/mosquitto /usr/bin/mosquitto_pub /usr/bin/mosquitto_sub; do
  for f in "$bin" $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$broker_ctx/rootfs$(dirname "$f")"
    cp -L "$f" "$broker_ctx/rootfs$f"
  done
done

for v in "${versions[@]}"; do
  printf '%s' "$v" >"$ctx/version"
  echo "== base $v"
  "$docker" build --build-arg "VERSION=$v" -t "fleet-test/base:$v" "$ctx"
  for name in "${names[@]}"; do
    tag=$registry/fleet-test/$name:$v
    echo "== $tag"
    ctx_of=$here/$name
    [[ $name != broker ]] || ctx_of=$broker_ctx
    "$docker" build --build-arg "BASE=fleet-test/base:$v" -t "$tag" "$ctx_of"
    "$docker" push "$tag"
  done
done

# Drop the untagged leftovers of earlier builds (every image here carries the label org.fleet.test).
"$docker" image prune -f --filter label=org.fleet.test >/dev/null

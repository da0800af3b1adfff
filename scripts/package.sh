#!/usr/bin/env bash
# Builds dist/glimpse_<version>_<arch>.deb with dpkg-deb (make package):
# the agent and the glimpse command, the systemd unit, a default
# environment file, the resolver snippets and a postinst that creates the
# glimpse user. Expects bin/glimpse-agent and bin/glimpse built (make build).
set -euo pipefail
cd "$(dirname "$0")/.."

# BIN_DIR and DIST_DIR (tests) default to bin and dist.
bin=${BIN_DIR:-bin}
dist=${DIST_DIR:-dist}
for b in "$bin/glimpse-agent" "$bin/glimpse"; do
	[ -x "$b" ] || { echo "package: $b is missing: run make build" >&2; exit 1; }
done
command -v dpkg-deb >/dev/null || { echo "package: dpkg-deb is missing (Debian package dpkg)" >&2; exit 1; }

# Debian versions start with a digit: v1.2.3 -> 1.2.3; no tag -> 0.0.0~git<date>.<commit>.
desc=$(git describe --tags --always --dirty 2>/dev/null || echo unknown)
case $desc in
v[0-9]*) version=${desc#v} ;;
*) version="0.0.0~git$(date -u +%Y%m%d).$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)" ;;
esac
version=${version//-/+}
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$bin/glimpse-agent" "$stage/usr/bin/glimpse-agent"
install -D -m 0755 "$bin/glimpse" "$stage/usr/bin/glimpse"
install -D -m 0644 deploy/systemd/glimpse-agent.service "$stage/lib/systemd/system/glimpse-agent.service"
install -D -m 0644 deploy/default/glimpse-agent "$stage/etc/default/glimpse-agent"
install -D -m 0644 docs/unbound-glimpse.conf "$stage/usr/share/glimpse/unbound/glimpse.conf"
for f in docs/resolvers/*; do
	install -D -m 0644 "$f" "$stage/usr/share/glimpse/resolvers/$(basename "$f")"
done
install -D -m 0644 LICENSE "$stage/usr/share/doc/glimpse/copyright"
install -D -m 0644 README.md "$stage/usr/share/doc/glimpse/README.md"
install -D -m 0644 CHANGELOG.md "$stage/usr/share/doc/glimpse/CHANGELOG.md"
install -D -m 0755 deploy/debian/postinst "$stage/DEBIAN/postinst"
install -D -m 0755 deploy/debian/prerm "$stage/DEBIAN/prerm"
echo /etc/default/glimpse-agent >"$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: glimpse
Version: $version
Architecture: $arch
Maintainer: glimpse maintainers <glimpse@rugby110.github.io>
Installed-Size: $size
Depends: passwd
Suggests: unbound, consul
Section: net
Priority: optional
Homepage: https://github.com/rugby110/glimpse
Description: service discovery agent for hosts running Consul
 glimpse-agent runs beside the host's Consul agent and answers the fleet's
 topology, <service>.<job>.<env>.<product>.<zone>, over DNS (behind the
 host's resolver) and HTTP, with every change pushed. The glimpse command
 asks it. The unit runs it as the glimpse user.
CONTROL

mkdir -p "$dist"
out="$dist/glimpse_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$out" >/dev/null
echo "package: $out"

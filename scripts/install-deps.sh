#!/usr/bin/env bash
# Installs the Debian packages that `make test` and `make run` need, when they
# are missing:
#   unbound   the resolver daemon; tests start their own instance in the
#             foreground, so the packaged service is kept stopped and disabled
#   dnsutils  dig, used by `make run` (scripts/demo.sh prints dig commands)
#   curl      scripts/demo.sh talks to Consul's HTTP API with it
#   gcc       cgo, which `go test -race` needs
#   bind9, knot-resolver, pdns-recursor, dnsmasq-base
#             the other resolvers of docs/resolvers.md, which TestResolvers
#             starts in the foreground; their packaged services are kept
#             stopped and disabled
#   prometheus  prometheus and promtool: the alert rules' tests
#   jq        the docs' examples, which a test runs against the demo
#   chromium  the headless browser that tests the /ui/ page
# With the argument "bench" (`make bench`), also:
#   dnsperf     the DNS load generator of bench/
#   util-linux  taskset, which pins servers and load generators to CPUs
#   nsd, knot   NSD and Knot DNS, the authoritative servers the DNS section
#               compares glimpse with (their services are kept stopped)
# Run by `make deps`. As non-root it only reports what is missing.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

missing=()
if ! have unbound && [ ! -x /usr/sbin/unbound ]; then missing+=(unbound); fi
if ! have dig; then missing+=(dnsutils); fi
if ! have curl; then missing+=(curl); fi
if ! have gcc; then missing+=(gcc libc6-dev); fi
if ! have named && [ ! -x /usr/sbin/named ]; then missing+=(bind9); fi
if ! have kresd && [ ! -x /usr/sbin/kresd ]; then missing+=(knot-resolver); fi
if ! have pdns_recursor && [ ! -x /usr/sbin/pdns_recursor ]; then missing+=(pdns-recursor); fi
if ! have dnsmasq && [ ! -x /usr/sbin/dnsmasq ]; then missing+=(dnsmasq-base); fi
if ! have promtool; then missing+=(prometheus); fi
if ! have systemd-analyze; then missing+=(systemd); fi
if ! have jq; then missing+=(jq); fi
if ! have chromium && ! have chromium-browser; then missing+=(chromium); fi
if [ "${1:-}" = bench ]; then
	if ! have dnsperf; then missing+=(dnsperf); fi
	if ! have taskset; then missing+=(util-linux); fi
	if ! have nsd && [ ! -x /usr/sbin/nsd ]; then missing+=(nsd); fi
	if ! have knotd && [ ! -x /usr/sbin/knotd ]; then missing+=(knot); fi
fi

if [ "${#missing[@]}" -eq 0 ]; then
	echo "deps: unbound, dig, curl, gcc, jq, chromium and the resolvers${1:+ and the $1 tools} are installed"
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "deps: MISSING Debian packages: ${missing[*]} (not root, not installing: run 'sudo make deps' or 'sudo apt-get install ${missing[*]}')" >&2
	exit 0
fi

if ! have apt-get; then
	echo "deps: MISSING packages: ${missing[*]} and apt-get is not available: install them by hand" >&2
	exit 1
fi

# Keep package maintainer scripts from starting services (unbound's postinst
# would start the system resolver otherwise). Only add a policy if none exists.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\n# added by glimpse scripts/install-deps.sh while installing packages\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	added_policy=1
fi
cleanup() {
	if [ "$added_policy" -eq 1 ]; then rm -f "$policy"; fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
echo "deps: installing ${missing[*]}"
echo "+ apt-get update"
apt-get update -q
echo "+ apt-get install -y --no-install-recommends ${missing[*]}"
apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null

# glimpse's tests run their own resolver instances: make sure the packaged
# ones are neither running nor enabled at boot.
for svc in unbound named kresd@1 pdns-recursor prometheus nsd knot; do
	pkg=${svc%%@*}
	case $svc in named) pkg=bind9 ;; kresd@1) pkg=knot-resolver ;; esac
	[[ " ${missing[*]} " == *" $pkg "* ]] || continue
	if have systemctl; then
		if [ -d /run/systemd/system ]; then
			systemctl disable --now "$svc.service" >/dev/null 2>&1 || true
		else
			systemctl disable "$svc.service" >/dev/null 2>&1 || true
		fi
	fi
	if have update-rc.d && [ -e "/etc/init.d/$svc" ]; then
		update-rc.d "$svc" disable >/dev/null 2>&1 || true
	fi
	# Without systemd, stop an instance the init script may have started anyway.
	if [ ! -d /run/systemd/system ] && [ -x "/etc/init.d/$svc" ]; then
		"/etc/init.d/$svc" stop >/dev/null 2>&1 || true
	fi
done

echo "deps: done"

#!/usr/bin/env bash
# shellcheck disable=SC2317  # functions called indirectly (traps, wait_for)
# Local demo of glimpse-agent (`make run`):
#   1. starts a Consul dev agent on 127.0.0.1 (datacenter dc1, node demo-node-1),
#   2. registers a demo topology through Consul's HTTP API,
#   3. prints dig/curl commands to try, and runs bin/glimpse-agent until Ctrl-C.
# Ctrl-C (or SIGTERM) stops both glimpse-agent and Consul.
#
# Environment:
#   CONSUL_BIN          Consul binary (default: bin/consul, built by `make consul`)
#   GLIMPSE_AGENT_BIN   agent binary (default: bin/glimpse-agent, `make build`)
#   GLIMPSE_DNS_ADDR    agent DNS address (default 127.0.0.1:5959), read by the agent
#   GLIMPSE_HTTP_ADDR   agent HTTP address (default 127.0.0.1:5960), read by the agent
#   GLIMPSE_PROVIDERS_SOCKET  the providers socket (default: in the demo's
#                       temporary directory; the docs' examples use
#                       /run/glimpse/providers.sock, the package's)
#   DEMO_REGISTER_ONLY  when 1: stop after registering the topology (no agent)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONSUL=${CONSUL_BIN:-$ROOT/bin/consul}
AGENT=${GLIMPSE_AGENT_BIN:-$ROOT/bin/glimpse-agent}
CLI=$(dirname "$AGENT")/glimpse
DC=dc1
NODE=demo-node-1
DOMAIN=srv.glimpse.io

log() { printf '[demo] %s\n' "$*"; }
die() {
	printf '[demo] ERROR: %s\n' "$*" >&2
	exit 1
}

command -v curl >/dev/null 2>&1 || die "curl not found: run 'make deps'"
[ -x "$CONSUL" ] || die "Consul binary not found at $CONSUL: run 'make consul' (or set CONSUL_BIN)"

# ---------------------------------------------------------------- cleanup ----

WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/glimpse-demo.XXXXXX")
CONSUL_LOG=$WORKDIR/consul.log
CONSUL_PID=""
AGENT_PID=""
CONSUL_TROUBLE=0 # 1: something went wrong with Consul; show and keep its log
SOCKET=${GLIMPSE_PROVIDERS_SOCKET:-$WORKDIR/providers.sock}

# stop_pid PID NAME: SIGTERM, then SIGKILL after 10 s; reaps the child.
stop_pid() {
	local pid=$1 name=$2 i
	[ -n "$pid" ] || return 0
	kill -0 "$pid" 2>/dev/null || {
		wait "$pid" 2>/dev/null || true
		return 0
	}
	log "stopping $name (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "$name did not stop in 10s: killing it"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_pid "$AGENT_PID" glimpse-agent
	stop_pid "$CONSUL_PID" consul
	if [ "$CONSUL_TROUBLE" = 1 ] && [ -s "$CONSUL_LOG" ]; then
		log "last lines of the Consul log (kept in $CONSUL_LOG):"
		tail -n 20 "$CONSUL_LOG" | sed 's/^/    /'
	else
		rm -rf "$WORKDIR"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ ports ----

# port_busy PORT: true when something on this host uses PORT (TCP or UDP).
port_busy() {
	local p=$1
	if command -v ss >/dev/null 2>&1; then
		[ -n "$(ss -Hantu "( sport = :$p )" 2>/dev/null)" ]
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null
	fi
}

PICKED=" "
# pick_port DEFAULT: sets PORT to DEFAULT when free, else to a random free port.
pick_port() {
	local p=$1 i
	for ((i = 0; i < 200; i++)); do
		if [[ $PICKED != *" $p "* ]] && ! port_busy "$p"; then
			PICKED+="$p "
			PORT=$p
			return 0
		fi
		p=$((20000 + RANDOM % 30000))
	done
	die "no free port found"
}

pick_port 8500 && HTTP_PORT=$PORT
pick_port 8300 && SERVER_PORT=$PORT
pick_port 8301 && SERF_LAN_PORT=$PORT
pick_port 8302 && SERF_WAN_PORT=$PORT
pick_port 8502 && GRPC_PORT=$PORT
pick_port 8503 && GRPC_TLS_PORT=$PORT
CONSUL_ADDR=127.0.0.1:$HTTP_PORT
CONSUL_URL=http://$CONSUL_ADDR

# host:port for the printed commands, from the agent's own settings.
DNS_ADDR=${GLIMPSE_DNS_ADDR:-127.0.0.1:5959}
HTTP_ADDR=${GLIMPSE_HTTP_ADDR:-127.0.0.1:5960}
DNS_PORT=${DNS_ADDR##*:}
DNS_HOST=${DNS_ADDR%:*}
DNS_HOST=${DNS_HOST#[}
DNS_HOST=${DNS_HOST%]}
case $DNS_HOST in "" | 0.0.0.0 | ::) DNS_HOST=127.0.0.1 ;; esac
HTTP_PORT_AGENT=${HTTP_ADDR##*:}
HTTP_HOST=${HTTP_ADDR%:*}
case $HTTP_HOST in "" | 0.0.0.0 | "[::]") HTTP_HOST=127.0.0.1 ;; esac

# ----------------------------------------------------------------- consul ----

if [ "$HTTP_PORT" != 8500 ]; then
	log "port 8500 is busy: Consul's HTTP API goes on $HTTP_PORT"
fi
log "starting Consul dev agent ($("$CONSUL" version | head -n 1)): datacenter $DC, node $NODE, HTTP $CONSUL_URL"
log "Consul log: $CONSUL_LOG"
"$CONSUL" agent -dev \
	-client 127.0.0.1 -bind 127.0.0.1 \
	-datacenter "$DC" -node "$NODE" \
	-http-port "$HTTP_PORT" -dns-port -1 \
	-server-port "$SERVER_PORT" -serf-lan-port "$SERF_LAN_PORT" -serf-wan-port "$SERF_WAN_PORT" \
	-grpc-port "$GRPC_PORT" -grpc-tls-port "$GRPC_TLS_PORT" \
	-hcl 'disable_update_check = true' \
	</dev/null >"$CONSUL_LOG" 2>&1 &
CONSUL_PID=$!

# wait_for SECONDS DESCRIPTION COMMAND...: retries COMMAND until it succeeds.
wait_for() {
	local secs=$1 what=$2 i
	shift 2
	for ((i = 0; i < secs * 5; i++)); do
		if "$@"; then return 0; fi
		if ! kill -0 "$CONSUL_PID" 2>/dev/null; then
			CONSUL_TROUBLE=1
			die "Consul exited while waiting for $what"
		fi
		sleep 0.2
	done
	CONSUL_TROUBLE=1
	die "timed out after ${secs}s waiting for $what"
}

has_leader() {
	local leader
	leader=$(curl -fsS --max-time 2 "$CONSUL_URL/v1/status/leader" 2>/dev/null) || return 1
	[ -n "$leader" ] && [ "$leader" != '""' ]
}
node_registered() {
	curl -fsS --max-time 2 "$CONSUL_URL/v1/catalog/node/$NODE" 2>/dev/null | tr -d ' \t\r\n' | grep -q "\"Node\":\"$NODE\""
}
wait_for 60 "a Consul leader" has_leader
wait_for 30 "node $NODE in the catalog" node_registered
log "Consul is up: leader elected, node $NODE registered"

# --------------------------------------------------------------- topology ----

# register ID PRODUCT ENV JOB SERVICE PORT ADDRESS [OPTION...]
# ADDRESS "-" means the node's address (no service address). Options:
#   provider=P  adds the tag glimpse:provider=P
#   critical    attaches a TTL check that is never updated, so the instance
#               stays critical (unhealthy) and must not appear in DNS
REGISTERED=0
register() {
	local id=$1 product=$2 env=$3 job=$4 service=$5 port=$6 address=$7
	shift 7
	local address_json="" extra_tags="" check_json="" note="" opt
	for opt in "$@"; do
		case $opt in
		provider=*) extra_tags+=", \"glimpse:provider=${opt#provider=}\"" ;;
		critical)
			note="  (critical: not in DNS)"
			check_json=$(
				cat <<EOF
,
  "Check": {
    "CheckID": "$id-ttl",
    "Name": "demo TTL check, never updated",
    "Notes": "left critical on purpose: this instance must not appear in DNS",
    "TTL": "24h",
    "Status": "critical"
  }
EOF
			)
			;;
		*) die "register $id: unknown option $opt" ;;
		esac
	done
	if [ "$address" != - ]; then address_json="\"Address\": \"$address\","; fi
	curl -fsS --max-time 5 -X PUT --data-binary @- "$CONSUL_URL/v1/agent/service/register" <<EOF || { CONSUL_TROUBLE=1; die "registering $id failed"; }
{
  "ID": "$id",
  "Name": "$product",
  $address_json
  "Port": $port,
  "Tags": ["glimpse:env=$env", "glimpse:job=$job", "glimpse:service=$service"$extra_tags],
  "Meta": {"demo": "true"}$check_json
}
EOF
	REGISTERED=$((REGISTERED + 1))
	[ "$address" != - ] || address="127.0.0.1 (node)"
	printf '[demo]   %-27s %-36s %s\n' "$id" "$service.$job.$env.$product.$DC" "$address:$port$note"
}

log "registering the demo topology (Consul service ID, glimpse address, endpoint):"
#        ID                         product env     job    service port  address
register goku-stream-http-prod-1    goku    prod    stream http    8080  127.0.1.1
register goku-stream-http-prod-2    goku    prod    stream http    8081  127.0.1.2
register goku-stream-http-prod-3    goku    prod    stream http    8082  127.0.1.3 critical
register goku-stream-grpc-prod-1    goku    prod    stream grpc    9090  127.0.1.1
register goku-stream-http-staging-1 goku    staging stream http    18080 127.0.2.1
register goku-batch-worker-prod-1   goku    prod    batch  worker  7070  -         provider=demo
register vegeta-api-http-prod-1     vegeta  prod    api    http    8443  127.0.3.1
register vegeta-api-http-prod-2     vegeta  prod    api    http    8444  127.0.3.2
register vegeta-api-http-staging-1  vegeta  staging api    http    18443 127.0.4.1
register vegeta-cache-redis-prod-1  vegeta  prod    cache  redis   6379  127.0.3.10

# count_instances PRODUCT [QUERY]: instances of PRODUCT in Consul's health API
# (whose JSON may be pretty-printed: blanks are dropped before matching).
count_instances() {
	curl -fsS --max-time 2 "$CONSUL_URL/v1/health/service/$1${2:-}" 2>/dev/null |
		tr -d ' \t\r\n' | grep -o '"Service":{"ID":"[^"]*"' | wc -l | tr -d ' '
}
all_registered() {
	[ $(($(count_instances goku) + $(count_instances vegeta))) -eq "$REGISTERED" ]
}
wait_for 30 "the $REGISTERED instances in the catalog" all_registered
log "topology registered: goku $(count_instances goku '?passing=1')/$(count_instances goku) passing, vegeta $(count_instances vegeta '?passing=1')/$(count_instances vegeta) passing"

if [ "${DEMO_REGISTER_ONLY:-0}" = 1 ]; then
	log "DEMO_REGISTER_ONLY=1: not starting glimpse-agent"
	exit 0
fi

# ------------------------------------------------------------------ agent ----

if [ ! -x "$AGENT" ]; then
	die "glimpse-agent binary not found at $AGENT: run 'make build' (or 'make run', which builds it)"
fi
if port_busy "$DNS_PORT"; then
	log "warning: port $DNS_PORT (DNS) is already in use; set GLIMPSE_DNS_ADDR to use another"
fi

DIG="dig @$DNS_HOST -p $DNS_PORT"
cat <<EOF

Consul UI/API: $CONSUL_URL   (datacenter $DC, node $NODE)
glimpse-agent: DNS on $DNS_ADDR, HTTP on $HTTP_ADDR. Try, from another terminal:

  $DIG SRV http.stream.prod.goku.$DC.$DOMAIN      # 2 instances (the 3rd is critical)
  $DIG A http.stream.prod.goku.$DC.$DOMAIN        # 127.0.1.1, 127.0.1.2
  $DIG SRV grpc.stream.prod.goku.$DC.$DOMAIN
  $DIG SRV http.stream.staging.goku.$DC.$DOMAIN
  $DIG SRV worker.batch.prod.goku.$DC.$DOMAIN     # on the node's address
  $DIG SRV http.api.prod.vegeta.$DC.$DOMAIN
  $DIG SRV redis.cache.prod.vegeta.$DC.$DOMAIN
  $DIG SRV nope.stream.prod.goku.$DC.$DOMAIN      # NXDOMAIN
  $DIG A $NODE.node.$DC.$DOMAIN
  $DIG NS $DOMAIN                                 # the zone's Consul servers, at the apex
  $DIG SOA $DOMAIN
  curl -s $HTTP_HOST:$HTTP_PORT_AGENT/metrics | grep glimpse_
  curl -s $HTTP_HOST:$HTTP_PORT_AGENT/readyz

The glimpse command (same agent, from GLIMPSE_HTTP_ADDR or 127.0.0.1:5960):
  $CLI -http-addr $HTTP_ADDR lookup http.stream.prod.goku.$DC
  $CLI -http-addr $HTTP_ADDR topology
  $CLI -http-addr $HTTP_ADDR watch http.stream.prod.goku.$DC '*.api.prod.vegeta.$DC'

A provider writes its instances through the agent's socket, as its own user:
  curl -s --unix-socket $SOCKET -X PUT localhost/v1/providers/demo \
    -d '{"instances":[{"product":"goku","env":"prod","job":"stream","service":"admin","port":9090}]}'
  curl -s --unix-socket $SOCKET localhost/v1/providers/demo

Change the topology while it runs, e.g. make the critical instance healthy:
  curl -s -X PUT $CONSUL_URL/v1/agent/check/pass/goku-stream-http-prod-3-ttl
or remove one:
  curl -s -X PUT $CONSUL_URL/v1/agent/service/deregister/goku-stream-http-prod-2

Ctrl-C stops glimpse-agent and Consul.

EOF

log "starting $AGENT -consul.addr $CONSUL_ADDR -data.dir $WORKDIR/data -providers.socket $SOCKET -log.format console"
# In the background so that the traps run as soon as a signal arrives; its
# output still goes to this terminal.
"$AGENT" -consul.addr "$CONSUL_ADDR" -data.dir "$WORKDIR/data" -providers.socket "$SOCKET" -log.format console </dev/null &
AGENT_PID=$!
set +e
wait "$AGENT_PID"
rc=$?
set -e
AGENT_PID=""
log "glimpse-agent exited with status $rc"
exit "$rc"

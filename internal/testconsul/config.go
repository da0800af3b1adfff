package testconsul

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// clientAddr is the address every agent serves HTTP (and DNS, gRPC) on.
const clientAddr = "127.0.0.1"

// DefaultReconnectTimeout is the reconnect_timeout (and reconnect_timeout_wan)
// agents get when Options.ReconnectTimeout is zero. Consul's default is 72h
// and its documentation asks for at least 8h, but Consul 1.14 accepts any
// duration; a short one lets tests see a killed node reaped from the member
// lists and the catalog. Serf's reaper runs every 15s, so a failed node goes
// away between DefaultReconnectTimeout and DefaultReconnectTimeout+15s after
// it was detected as failed.
const DefaultReconnectTimeout = time.Second

// Options configure an agent. Most tests use Options{Dev: true}. The zero
// value is a client agent that joins nobody, so it never becomes ready: a
// test sets Dev, Server or RetryJoin.
type Options struct {
	// Datacenter is the agent's datacenter. Default "dc1".
	Datacenter string

	// NodeName is the agent's node name. Default: derived from the test name
	// (Start) or the process id (StartE), plus a sequence number, so it is
	// unique in the test binary. Restart keeps it.
	NodeName string

	// BindAddr is the address the agent's cluster listeners (Serf LAN, Serf
	// WAN, server RPC) bind to and advertise. Default "127.0.0.1". Any
	// 127.x.y.z address works on Linux, so a cluster's agents can each have
	// their own (127.0.0.2, 127.0.0.3...). HTTP, DNS and gRPC always listen
	// on 127.0.0.1.
	BindAddr string

	// Dev runs the agent with -dev: an in-memory server that is its own
	// single-server cluster, elected in well under a second. Server,
	// BootstrapExpect and DataDir are ignored. Restarting a dev agent
	// starts it with an empty state.
	Dev bool

	// Server makes a non-dev agent a server.
	Server bool

	// BootstrapExpect is the number of servers a non-dev server waits for
	// before electing a leader. When it is 0 for a server with no RetryJoin,
	// the server bootstraps alone (bootstrap_expect = 1).
	BootstrapExpect int

	// RetryJoin lists LAN addresses ("ip:serf_lan_port", see
	// Agent.SerfLANAddr) to join at start, retried every 200ms until one
	// answers.
	RetryJoin []string

	// RetryJoinWAN lists WAN addresses ("ip:serf_wan_port", see
	// Agent.SerfWANAddr) of servers in other datacenters to join at start.
	// Only servers (including dev agents) join the WAN.
	RetryJoinWAN []string

	// DataDir is a non-dev agent's data directory. Default: a "data"
	// directory in the agent's working directory. Restart keeps it.
	DataDir string

	// ACLDefaultPolicy and ACLInitialManagementToken enable ACLs when either
	// is set. The policy defaults to "deny"; the token defaults to a random
	// UUID. The token is also used as the agent token (so the agent can sync
	// its node) and by Agent.Client. In a cluster with ACLs, give every
	// server the same token.
	ACLDefaultPolicy          string
	ACLInitialManagementToken string

	// DNS enables Consul's DNS interface on a free port (Agent.DNSAddr).
	// It is disabled by default.
	DNS bool

	// GRPC enables the plaintext gRPC listener on a free port
	// (Agent.GRPCAddr). It is disabled by default, as is gRPC over TLS.
	GRPC bool

	// HTTPS adds an HTTPS listener on a free port (Agent.HTTPSAddr), with
	// a certificate for 127.0.0.1 from a CA made for the agent alone
	// (Agent.CAFile). Consul serves HTTP/2 on it. The plain HTTP listener
	// stays, and Client keeps using it.
	HTTPS bool

	// ReconnectTimeout is how long a failed node stays in the member lists
	// before it is reaped. Zero means DefaultReconnectTimeout.
	ReconnectTimeout time.Duration

	// ExtraArgs are appended to the "consul agent" command line, after the
	// generated configuration, which they therefore override: for example
	// []string{"-hcl", `primary_datacenter = "dc1"`}.
	ExtraArgs []string

	// LogOutput, when set, receives the agent's output (stdout and stderr)
	// as it is written. The output also always goes to a file in the agent's
	// working directory (Agent.LogPath). When LogOutput is nil, Start prints
	// the last 50 lines of that file if the test failed.
	LogOutput io.Writer
}

// aclEnabled reports whether the options turn ACLs on.
func (o *Options) aclEnabled() bool {
	return o.ACLDefaultPolicy != "" || o.ACLInitialManagementToken != ""
}

// nodeSeq numbers default node names.
var nodeSeq atomic.Int64

// withDefaults returns o with every default filled in. base is the start of
// a default node name.
func (o Options) withDefaults(base string) (Options, error) {
	if o.Datacenter == "" {
		o.Datacenter = "dc1"
	}
	if o.NodeName == "" {
		o.NodeName = fmt.Sprintf("%s-%d", sanitizeNodeName(base), nodeSeq.Add(1))
	}
	if o.BindAddr == "" {
		o.BindAddr = clientAddr
	}
	if o.ReconnectTimeout == 0 {
		o.ReconnectTimeout = DefaultReconnectTimeout
	}
	if o.aclEnabled() {
		if o.ACLDefaultPolicy == "" {
			o.ACLDefaultPolicy = "deny"
		}
		if o.ACLInitialManagementToken == "" {
			tok, err := randomUUID()
			if err != nil {
				return o, err
			}
			o.ACLInitialManagementToken = tok
		}
	}
	// Copy the slices so the caller may reuse theirs.
	o.RetryJoin = append([]string(nil), o.RetryJoin...)
	o.RetryJoinWAN = append([]string(nil), o.RetryJoinWAN...)
	o.ExtraArgs = append([]string(nil), o.ExtraArgs...)
	return o, nil
}

// sanitizeNodeName turns s (a test name, say) into a DNS-friendly label part:
// lower-case letters, digits and single dashes, at most 40 characters.
func sanitizeNodeName(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
		if b.Len() >= 40 {
			break
		}
	}
	name := strings.Trim(b.String(), "-")
	if name == "" {
		name = "node"
	}
	return name
}

// randomUUID returns a random (version 4) UUID, the format Consul expects for
// ACL tokens.
func randomUUID() (string, error) {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return "", err
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}

// writeConfig writes the agent's configuration file (JSON) to path.
func writeConfig(path string, o Options, p agentPorts, dataDir string, tf tlsFiles) error {
	orDisabled := func(port int) int {
		if port == 0 {
			return -1
		}
		return port
	}
	cfg := map[string]any{
		"datacenter":           o.Datacenter,
		"node_name":            o.NodeName,
		"bind_addr":            o.BindAddr,
		"client_addr":          clientAddr,
		"disable_update_check": true,
		// Consul's own default; -dev would log at DEBUG, which makes the
		// agent log a line per service it holds at each anti-entropy
		// sync and doubles the time of registering thousands of services
		// on one node (measured: 3,000 took 34 s at DEBUG, 16-18 s at
		// INFO). -log-level in ExtraArgs still wins.
		"log_level": "INFO",
		"ports": map[string]any{
			"http":     p.HTTP,
			"https":    orDisabled(p.HTTPS),
			"dns":      orDisabled(p.DNS),
			"grpc":     orDisabled(p.GRPC),
			"grpc_tls": -1, // servers default to 8503 when this is unset
			"serf_lan": p.SerfLAN,
			"serf_wan": p.SerfWAN,
			"server":   p.Server,
		},
		"reconnect_timeout":     o.ReconnectTimeout.String(),
		"reconnect_timeout_wan": o.ReconnectTimeout.String(),
		"retry_interval":        "200ms",
		"retry_interval_wan":    "200ms",
	}
	if o.HTTPS {
		cfg["tls"] = map[string]any{"defaults": map[string]any{
			"ca_file":         tf.CA,
			"cert_file":       tf.Cert,
			"key_file":        tf.Key,
			"verify_incoming": false,
		}}
	}
	if len(o.RetryJoin) > 0 {
		cfg["retry_join"] = o.RetryJoin
	}
	if len(o.RetryJoinWAN) > 0 {
		cfg["retry_join_wan"] = o.RetryJoinWAN
	}
	if !o.Dev {
		// Dev mode already has these fast timings; give them to other
		// agents too so that elections and failure detection take
		// milliseconds rather than seconds.
		gossip := map[string]any{
			"gossip_interval": "100ms",
			"probe_interval":  "100ms",
			"probe_timeout":   "100ms",
			"suspicion_mult":  3,
		}
		cfg["data_dir"] = dataDir
		cfg["server"] = o.Server
		cfg["gossip_lan"] = gossip
		cfg["gossip_wan"] = gossip
		cfg["performance"] = map[string]any{
			"raft_multiplier":  1,
			"leave_drain_time": "100ms",
		}
		if o.Server {
			expect := o.BootstrapExpect
			if expect == 0 && len(o.RetryJoin) == 0 {
				expect = 1
			}
			if expect > 0 {
				cfg["bootstrap_expect"] = expect
			}
			cfg["autopilot"] = map[string]any{"server_stabilization_time": "1s"}
		}
	}
	if o.aclEnabled() {
		cfg["acl"] = map[string]any{
			"enabled":        true,
			"default_policy": o.ACLDefaultPolicy,
			"tokens": map[string]any{
				"initial_management": o.ACLInitialManagementToken,
				"agent":              o.ACLInitialManagementToken,
			},
		}
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o600)
}

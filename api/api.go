// Package api holds the wire types of glimpse-agent's HTTP API, as the
// agent sends and takes them and as its clients (package client, the
// glimpse CLI, the gRPC resolver) read and write them, and the syntax of
// glimpse addresses. It depends on the standard library only.
//
// docs/http.md and docs/providers.md describe the endpoints these types
// travel on.
package api

import "time"

// Instance is one instance of an address, as lookups and subscriptions
// show it.
type Instance struct {
	// Node is the Consul node the instance is registered on.
	Node string `json:"node"`
	// Address is the instance's IP address: its own, or its node's.
	Address string `json:"address"`
	Port    uint16 `json:"port"`
	// Health is "passing", "warning" or "critical".
	Health string `json:"health"`
	// Provider is the glimpse provider that registered it, "" when none
	// did.
	Provider string `json:"provider"`
	Zone     string `json:"zone"`
	Product  string `json:"product"`
	Env      string `json:"env"`
	Job      string `json:"job"`
	Service  string `json:"service"`
}

// Lookup is the body of GET /v1/lookup/<address>, and of a long-poll's
// answer.
type Lookup struct {
	// Index is the agent's cache index for the answer: pass it as index= to
	// wait for a change. It starts again from 1 when the agent restarts.
	Index     uint64     `json:"index"`
	Address   string     `json:"address"`
	Instances []Instance `json:"instances"`
}

// The types of Message.
const (
	// MessageSnapshot is an address's whole state: the first message of
	// each address of a subscription, and every address's after a resume
	// the agent's history could not serve.
	MessageSnapshot = "snapshot"
	// MessageUpdate is an address's whole new state after a change.
	MessageUpdate = "update"
	// MessageSynced, sent to subscriptions made with synced=true, says that
	// the subscriber now holds the agent's state of everything it
	// subscribed to: sent once per connection, after the
	// messages of every product it names has a state (which, right after
	// an agent restart, may take that product's first read). Resumed tells
	// how to read what came before it: true, only changes since the index
	// the subscriber resumed from (what was not mentioned is unchanged);
	// false, snapshots of every address there is (an address the
	// subscriber held that was not mentioned is gone).
	MessageSynced = "synced"
)

// Message is one websocket message of GET /v1/subscribe: an address's full
// set of instances (empty when it has none).
type Message struct {
	Type  string `json:"type"`
	Index uint64 `json:"index"`
	// Address and Instances are those of a snapshot or an update.
	Address   string     `json:"address"`
	Instances []Instance `json:"instances"`
	// Resumed is set in a synced message: see MessageSynced.
	Resumed bool `json:"resumed,omitempty"`
}

// Error is the body of every 4xx and 5xx answer.
type Error struct {
	Error string `json:"error"`
}

// Zones is the body of GET /v1/zones.
type Zones struct {
	// Index is the cache index.
	Index uint64       `json:"index"`
	Zones []ZoneStatus `json:"zones"`
}

// ZoneStatus is one zone in GET /v1/zones.
type ZoneStatus struct {
	Zone string `json:"zone"`
	// Local is true for the agent's own zone.
	Local bool `json:"local"`
	// Watched is true for a zone in the cache; false for a datacenter
	// Consul knows that nobody has asked for (yet, or for a while).
	Watched bool `json:"watched"`
	// Synced is true once every watcher of the zone delivered its first
	// result.
	Synced bool `json:"synced"`
	// Index is the cache index at which the zone last changed.
	Index uint64 `json:"index"`
	// LastContact is the time of the last fresh result from Consul; nil
	// when there was none.
	LastContact *time.Time `json:"last_contact"`
	// SecondsStale is 0 while every watcher of the zone is in contact with
	// Consul, else the seconds since the last fresh result.
	SecondsStale float64 `json:"seconds_stale"`
	// Error is why the zone is stale: the last failure of its watchers.
	Error string `json:"error,omitempty"`
	// Products counts the zone's glimpse products Consul lists;
	// WatchedProducts those this host reads (or pins) that have a state.
	Products        int `json:"products"`
	WatchedProducts int `json:"watched_products"`
	Instances       int `json:"instances"`
	// Failing lists the products whose last read failed, with why; they
	// answer from their last state, or SERVFAIL without one.
	Failing []ProductProblem `json:"failing,omitempty"`
}

// ProductProblem is a product whose reads fail.
type ProductProblem struct {
	Product string `json:"product"`
	Error   string `json:"error"`
}

// Topology is the body of GET /v1/topology.
type Topology struct {
	Zone string `json:"zone"`
	// Index is the cache index at which the zone last changed (the cache
	// index for a zone not in the cache yet).
	Index uint64 `json:"index"`
	// Synced is false while the zone's first sync is pending: the
	// hierarchy may be incomplete.
	Synced bool `json:"synced"`
	// Products holds every glimpse product Consul lists; only those this
	// host reads (watched) have their hierarchy.
	Products map[string]ProductTopology `json:"products"`
}

// ProductTopology is one product of a Topology.
type ProductTopology struct {
	// Watched is true for a product this host reads or pins, whose
	// hierarchy follows; false for one it has not read.
	Watched bool                   `json:"watched"`
	Envs    map[string]EnvTopology `json:"envs"`
	// Error is why the product's reads fail, if they do.
	Error string `json:"error,omitempty"`
}

// EnvTopology is one env of a product.
type EnvTopology struct {
	Jobs map[string]JobTopology `json:"jobs"`
}

// JobTopology is one job of an env.
type JobTopology struct {
	Services map[string]*HealthCounts `json:"services"`
}

// HealthCounts counts the instances of an address by health.
type HealthCounts struct {
	Passing  int `json:"passing"`
	Warning  int `json:"warning"`
	Critical int `json:"critical"`
}

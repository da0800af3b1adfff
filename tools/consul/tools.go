//go:build tools

// Package tools pins the Consul release that tests, benchmarks and `make run`
// use. `make consul` builds it into bin/consul; this module is separate so
// Consul's dependency tree never reaches the agent's go.mod.
package tools

import _ "github.com/hashicorp/consul"

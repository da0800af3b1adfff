package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
	"golang.org/x/sync/errgroup"
)

// domain is glimpse-agent's default DNS domain.
const domain = "srv.glimpse.io"

// instancesPerNode is how many instances share a Consul node.
const instancesPerNode = 20

// txnOps is the most operations sent in one Consul transaction (Consul
// accepts up to 128).
const txnOps = 64

// topology is the registered fleet: products × jobs × perJob instances of
// the service "http" in env "prod", spread over nodes so that the instances
// of one job run on distinct nodes. Each instance has a passing check that
// the propagation test flips.
type topology struct {
	products, jobs, perJob int
}

func (t topology) size() int { return t.products * t.jobs * t.perJob }

func (t topology) nodes() int { return (t.size() + instancesPerNode - 1) / instancesPerNode }

func productName(p int) string { return fmt.Sprintf("p%05d", p) }
func jobName(j int) string     { return fmt.Sprintf("j%d", j) }
func nodeName(n int) string    { return fmt.Sprintf("node-%05d", n) }

// nodeAddr is node n's IPv4 address in 10.0.0.0/8.
func nodeAddr(n int) string { return fmt.Sprintf("10.%d.%d.%d", (n>>16)&255, (n>>8)&255, n&255) }

// instance locates instance k of job j of product p.
func (t topology) node(p, j, k int) int {
	// Consecutive k of a job land jobs apart: distinct nodes as long as
	// there are more nodes than jobs × perJob.
	return (p*t.jobs*t.perJob + k*t.jobs + j) % t.nodes()
}

func serviceID(p, j, k int) string { return fmt.Sprintf("%s-%s-%d", productName(p), jobName(j), k) }
func checkID(p, j, k int) string   { return "check-" + serviceID(p, j, k) }
func port(k int) int               { return 20000 + k }

// glimpseName is the glimpse DNS name of job j of product p.
func glimpseName(p, j int) string { return glimpseAddress(p, j) + "." + domain }

// glimpseAddress is the HTTP API address of job j of product p.
func glimpseAddress(p, j int) string {
	return fmt.Sprintf("http.%s.prod.%s.dc1", jobName(j), productName(p))
}

// consulName is the equivalent name in Consul's DNS interface: the job is a
// plain tag on each instance, so that Consul answers the same 4 instances
// glimpse does rather than the product's 20.
func consulName(p, j int) string {
	return fmt.Sprintf("%s.%s.service.dc1.consul", jobName(j), productName(p))
}

// serviceOps returns the transaction operations registering instance
// (p, j, k) with a passing (or critical) check.
func (t topology) serviceOps(p, j, k int, status string) api.TxnOps {
	n := t.node(p, j, k)
	svc := api.AgentService{
		ID:      serviceID(p, j, k),
		Service: productName(p),
		Port:    port(k),
		Tags:    []string{"glimpse:env=prod", "glimpse:job=" + jobName(j), "glimpse:service=http", jobName(j)},
	}
	return append(api.TxnOps{{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: nodeName(n), Service: svc}}},
		t.checkOps(p, j, k, status)...)
}

// checkOps returns the transaction operation setting the check of instance
// (p, j, k) to status.
func (t topology) checkOps(p, j, k int, status string) api.TxnOps {
	return api.TxnOps{{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{
		Node: nodeName(t.node(p, j, k)), CheckID: checkID(p, j, k), Name: "alive", Status: status,
		ServiceID: serviceID(p, j, k), ServiceName: productName(p),
	}}}}
}

// register registers products [from, t.products) (and every node) in
// Consul's catalog, in transactions of txnOps operations, 4 at a time.
func (t topology) register(ctx context.Context, c *api.Client, from int) error {
	var nodes, services api.TxnOps
	for n := 0; n < t.nodes(); n++ {
		nodes = append(nodes, &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: nodeName(n), Address: nodeAddr(n), Datacenter: "dc1"}}})
	}
	for p := from; p < t.products; p++ {
		for j := 0; j < t.jobs; j++ {
			for k := 0; k < t.perJob; k++ {
				services = append(services, t.serviceOps(p, j, k, api.HealthPassing)...)
			}
		}
	}
	// Nodes first: a service needs its node.
	for _, ops := range []api.TxnOps{nodes, services} {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(4)
		for len(ops) > 0 {
			batch := ops[:min(txnOps, len(ops))]
			ops = ops[len(batch):]
			g.Go(func() error { return txn(gctx, c, batch) })
		}
		if err := g.Wait(); err != nil {
			return err
		}
	}
	return nil
}

// txn runs ops in one Consul transaction.
func txn(ctx context.Context, c *api.Client, ops api.TxnOps) error {
	ok, resp, _, err := c.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("consul txn: %w", err)
	}
	if !ok {
		var msgs []string
		for _, e := range resp.Errors {
			if len(msgs) == 3 {
				msgs = append(msgs, fmt.Sprintf("and %d more", len(resp.Errors)-3))
				break
			}
			msgs = append(msgs, e.What)
		}
		return fmt.Errorf("consul txn rolled back: %s", strings.Join(msgs, "; "))
	}
	return nil
}

// queryFile writes dnsperf's input: for every job address, one SRV and one
// A query, in an order that spreads products; name is glimpseName or
// consulName.
func (t topology) queryLines(name func(p, j int) string) string {
	var b strings.Builder
	for j := 0; j < t.jobs; j++ {
		for p := 0; p < t.products; p++ {
			fmt.Fprintf(&b, "%s SRV\n%s A\n", name(p, j), name(p, j))
		}
	}
	return b.String()
}

// Package grpcresolver resolves gRPC targets through the host's
// glimpse-agent, with every change pushed: import it, and
//
//	conn, err := grpc.NewClient("glimpse:///http.stream.prod.goku.dc1",
//		grpc.WithTransportCredentials(insecure.NewCredentials()),
//		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"round_robin": {}}]}`))
//
// connects to the healthy instances of that address, and follows them as
// they change, within milliseconds of Consul. The target's authority names
// the agent ("glimpse://127.0.0.1:5960/…"); without one, it is
// $GLIMPSE_HTTP_ADDR or 127.0.0.1:5960. The address may have wildcards:
// the instances of every address it matches are used.
//
// It is a package of its own so that programs without gRPC do not link it.
package grpcresolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/grpc/resolver"

	"github.com/rugby110/glimpse/api"
	"github.com/rugby110/glimpse/client"
)

// Scheme is the target scheme this resolver serves.
const Scheme = "glimpse"

func init() {
	resolver.Register(NewBuilder(nil))
}

// NewBuilder returns a resolver builder for Scheme that asks c (nil: the
// agent the target's authority names, else the default one). Register it
// with resolver.Register, or pass it to grpc.WithResolvers.
func NewBuilder(c *client.Client) resolver.Builder {
	return &builder{c: c}
}

type builder struct {
	c *client.Client
}

func (b *builder) Scheme() string { return Scheme }

func (b *builder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	address := strings.TrimPrefix(target.Endpoint(), "/")
	if _, err := api.ParseAddress(address); err != nil {
		return nil, fmt.Errorf("glimpse resolver: target %q: %w", target.URL.String(), err)
	}
	c := b.c
	if c == nil || target.URL.Host != "" {
		var err error
		if c, err = client.New(target.URL.Host); err != nil {
			return nil, fmt.Errorf("glimpse resolver: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	w, err := c.Watch(ctx, []string{address}, client.WatchOptions{})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("glimpse resolver: %w", err)
	}
	r := &glimpseResolver{cancel: cancel, w: w, cc: cc, address: address, done: make(chan struct{})}
	go r.run()
	return r, nil
}

// glimpseResolver pushes a Watch's state to gRPC.
type glimpseResolver struct {
	cancel  context.CancelFunc
	w       *client.Watch
	cc      resolver.ClientConn
	address string
	done    chan struct{} // closed when run has returned
}

func (r *glimpseResolver) run() {
	defer close(r.done)
	synced := false
	for e := range r.w.Events() {
		switch e.Type {
		case client.Synced:
			synced = true
			r.update()
		case client.Snapshot, client.Update:
			if synced {
				r.update()
			}
		case client.Disconnected:
			if !synced {
				// Nothing known yet: gRPC should know why.
				r.cc.ReportError(fmt.Errorf("glimpse resolver: %s: %w", r.address, e.Err))
			}
			// Otherwise the last known instances stay in use.
		}
	}
}

// update hands gRPC the current instances, or reports that there are
// none.
func (r *glimpseResolver) update() {
	var addrs []resolver.Address
	for _, ins := range r.w.State() {
		for _, in := range ins {
			addrs = append(addrs, resolver.Address{Addr: net.JoinHostPort(in.Address, strconv.Itoa(int(in.Port)))})
		}
	}
	sort.Slice(addrs, func(i, j int) bool { return addrs[i].Addr < addrs[j].Addr })
	if len(addrs) == 0 {
		r.cc.ReportError(errors.New("glimpse resolver: " + r.address + " has no healthy instance"))
		return
	}
	_ = r.cc.UpdateState(resolver.State{Addresses: addrs})
}

// ResolveNow does nothing: every change is pushed.
func (r *glimpseResolver) ResolveNow(resolver.ResolveNowOptions) {}

// Close stops the watch and waits for it to end: no call reaches gRPC
// after it returns.
func (r *glimpseResolver) Close() {
	r.cancel()
	<-r.done
}

package provider

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/sync/errgroup"
)

// Tags glimpse puts on a provider's registrations (see watch/convert.go for
// the ones the watchers read).
const (
	TagEnv      = "glimpse:env="
	TagJob      = "glimpse:job="
	TagService  = "glimpse:service="
	TagProvider = "glimpse:provider="
	TagProduct  = "glimpse:product="
)

// MetaSpec is the service meta key holding a hash of everything glimpse
// registered for an instance (tags, address, port, check). A registration
// whose hash differs from the desired one is registered again.
const MetaSpec = "glimpse-spec"

// idPrefix starts the Consul service ID of every provider registration.
const idPrefix = "glimpse-"

// ServiceID returns the Consul service ID of an instance of provider: stable
// for the instance's identity (product, env, job, service, address, port),
// so that applying the same body again touches nothing. provider and the
// labels are compared case-insensitively.
func ServiceID(provider string, in Instance) string {
	provider = lower(provider)
	k := keyOf(&in)
	h := sha256.New()
	for _, s := range []string{provider, k.product, k.env, k.job, k.service, k.address, strconv.Itoa(k.port)} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return idPrefix + provider + "-" + hex.EncodeToString(h.Sum(nil)[:8])
}

func lower(s string) string {
	n, err := CheckName(s)
	if err != nil {
		return s
	}
	return n
}

// CallTimeout bounds each request to the Consul agent, so that a hung agent
// fails an application (which is then retried) instead of holding the
// provider's lock, and the requests queued behind it, forever.
const CallTimeout = 10 * time.Second

// call returns a context for one request to the Consul agent.
func call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, CallTimeout)
}

// Syncer makes the local Consul agent's registrations of a provider equal to
// that provider's body. Apply calls for one provider are serialised, so two
// bodies of the same provider never interleave; those of different
// providers run side by side (their service IDs never collide). A Syncer is
// safe for concurrent use.
type Syncer struct {
	client *api.Client
	mu     sync.Mutex
	locks  map[string]*nameLock // by provider, while in use
}

type nameLock struct {
	sync.Mutex
	users int // guarded by Syncer.mu
}

// ApplyParallel is how many registrations or deregistrations of one
// provider's change are sent to the Consul agent at once. A provider of
// thousands of instances is applied in seconds rather than minutes, and the
// requests stay within the agent's connection budget.
const ApplyParallel = 8

// NewSyncer returns a Syncer registering with the Consul agent of client.
func NewSyncer(client *api.Client) *Syncer {
	return &Syncer{client: client, locks: map[string]*nameLock{}}
}

// lock serialises the applications of one provider; the function it
// returns unlocks.
func (s *Syncer) lock(name string) func() {
	s.mu.Lock()
	l := s.locks[name]
	if l == nil {
		l = &nameLock{}
		s.locks[name] = l
	}
	l.users++
	s.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		s.mu.Lock()
		if l.users--; l.users == 0 {
			delete(s.locks, name)
		}
		s.mu.Unlock()
	}
}

// Apply makes the local Consul agent's service registrations tagged
// glimpse:provider=<name> equal to b: it registers the instances that are
// missing or differ, and deregisters that provider's registrations b no
// longer holds. Registrations without that exact tag are never touched; an
// instance whose service ID is taken by such a registration is an error.
// Registrations go ApplyParallel at a time; after the first failed Consul
// call Apply starts no other and returns its error; what was done until
// then stays done, and applying b again completes it. An
// invalid name or body is a *ValidationError and nothing is done.
func (s *Syncer) Apply(ctx context.Context, name string, b *Body) error {
	_, _, err := s.reconcile(ctx, name, b)
	return err
}

// reconcile is Apply, also reporting how many registrations and
// deregistrations it made (0 when the Consul agent already matched b) and
// the service IDs of b's instances: what the provider's registrations are
// once it holds.
func (s *Syncer) reconcile(ctx context.Context, name string, b *Body) (changed int, want map[string]bool, err error) {
	name, err = CheckName(name)
	if err != nil {
		return 0, nil, err
	}
	nb := &Body{Instances: slices.Clone(b.Instances)}
	for i, in := range nb.Instances {
		if in.Check != nil {
			c := *in.Check
			nb.Instances[i].Check = &c
		}
	}
	Normalize(nb)
	if err := Validate(nb); err != nil {
		return 0, nil, err
	}

	defer s.lock(name)()

	agent := s.client.Agent()
	cctx, cancel := call(ctx)
	services, err := agent.ServicesWithFilterOpts("", (&api.QueryOptions{}).WithContext(cctx))
	cancel()
	if err != nil {
		return changed, nil, fmt.Errorf("provider %s: list the Consul agent's services: %w", name, err)
	}
	cctx, cancel = call(ctx)
	checks, err := agent.ChecksWithFilterOpts("", (&api.QueryOptions{}).WithContext(cctx))
	cancel()
	if err != nil {
		return changed, nil, fmt.Errorf("provider %s: list the Consul agent's checks: %w", name, err)
	}
	checkCount := map[string]int{}
	for _, c := range checks {
		if c.ServiceID != "" {
			checkCount[c.ServiceID]++
		}
	}
	tag := TagProvider + name
	owned := map[string]*api.AgentService{}
	for id, svc := range services {
		if slices.Contains(svc.Tags, tag) {
			owned[id] = svc
		}
	}

	var nodeAddr string // fetched when a check needs it
	for _, in := range nb.Instances {
		if in.Address == "" && in.Check != nil && in.Check.Target == "" && in.Check.Type != CheckTTL {
			if nodeAddr, err = s.nodeAddress(ctx); err != nil {
				return changed, nil, fmt.Errorf("provider %s: %w", name, err)
			}
			break
		}
	}
	// What to send, decided before anything is: an ID taken by a
	// registration that is not this provider's stops the whole change.
	want = make(map[string]bool, len(nb.Instances))
	var regs []*api.AgentServiceRegistration
	var regFor []Instance
	for _, in := range nb.Instances {
		id := ServiceID(name, in)
		want[id] = true
		reg := registration(name, id, in, nodeAddr)
		cur, mine := owned[id]
		if !mine {
			if _, taken := services[id]; taken {
				return changed, nil, fmt.Errorf("provider %s: service ID %s is registered without the tag %s; not replacing it", name, id, tag)
			}
		} else if upToDate(cur, reg, checkCount[id]) {
			continue
		}
		regs, regFor = append(regs, reg), append(regFor, in)
	}
	gone := make([]string, 0, len(owned))
	for id := range owned {
		if !want[id] {
			gone = append(gone, id)
		}
	}
	slices.Sort(gone)

	// Registrations first, then deregistrations: a provider moving its
	// instances never has fewer registered than it asked for because a
	// registration failed.
	var done atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(ApplyParallel)
	for i, reg := range regs {
		g.Go(func() error {
			cctx, cancel := call(gctx)
			defer cancel()
			if err := agent.ServiceRegisterOpts(reg, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(cctx)); err != nil {
				return fmt.Errorf("provider %s: register %s (%s): %w", name, reg.ID, describe(regFor[i]), err)
			}
			done.Add(1)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return int(done.Load()), nil, err
	}
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(ApplyParallel)
	for _, id := range gone {
		g.Go(func() error {
			cctx, cancel := call(gctx)
			defer cancel()
			if err := agent.ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(cctx)); err != nil {
				return fmt.Errorf("provider %s: deregister %s: %w", name, id, err)
			}
			done.Add(1)
			return nil
		})
	}
	err = g.Wait()
	changed = int(done.Load())
	if err != nil {
		return changed, nil, err
	}
	return changed, want, nil
}

// Owned lists the local Consul agent's registrations made by glimpse: the
// service IDs of each provider, by the provider's tag. It is one request to
// the local agent, which answers from its own state.
func (s *Syncer) Owned(ctx context.Context) (map[string][]string, error) {
	ctx, cancel := call(ctx)
	defer cancel()
	services, err := s.client.Agent().ServicesWithFilterOpts("", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list the Consul agent's services: %w", err)
	}
	owned := map[string][]string{}
	for id, svc := range services {
		for _, t := range svc.Tags {
			if name, ok := strings.CutPrefix(t, TagProvider); ok {
				owned[name] = append(owned[name], id)
			}
		}
	}
	return owned, nil
}

// nodeAddress returns the local Consul agent's address, the default target
// of the checks of instances without an address of their own.
func (s *Syncer) nodeAddress(ctx context.Context) (string, error) {
	ctx, cancel := call(ctx)
	defer cancel()
	var self struct {
		Member struct{ Addr string }
	}
	if _, err := s.client.Raw().Query("/v1/agent/self", &self, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return "", fmt.Errorf("read the Consul agent's address: %w", err)
	}
	if self.Member.Addr == "" {
		return "", fmt.Errorf("the Consul agent reports no address")
	}
	return self.Member.Addr, nil
}

// registration builds the Consul registration of in. nodeAddr is the
// default check target when in has no address.
func registration(provider, id string, in Instance, nodeAddr string) *api.AgentServiceRegistration {
	reg := &api.AgentServiceRegistration{
		ID:      id,
		Name:    in.Product,
		Address: in.Address,
		Port:    in.Port,
		Tags: []string{
			TagEnv + in.Env,
			TagJob + in.Job,
			TagService + in.Service,
			TagProvider + provider,
			TagProduct + in.Product,
		},
	}
	if c := in.Check; c != nil {
		host := in.Address
		if host == "" {
			host = nodeAddr
		}
		hostPort := net.JoinHostPort(host, strconv.Itoa(in.Port))
		ac := &api.AgentServiceCheck{Name: "glimpse " + c.Type + " check"}
		switch c.Type {
		case CheckTTL:
			ac.TTL = c.TTL
		case CheckTCP, CheckHTTP:
			ac.Interval, ac.Timeout = c.Interval, c.Timeout
			if ac.Interval == "" {
				ac.Interval = DefaultInterval
			}
			if c.Type == CheckTCP {
				ac.TCP = c.Target
				if ac.TCP == "" {
					ac.TCP = hostPort
				}
			} else {
				ac.HTTP = c.Target
				if ac.HTTP == "" {
					ac.HTTP = "http://" + hostPort + "/"
				}
			}
		}
		reg.Check = ac
	}
	reg.Meta = map[string]string{MetaSpec: specHash(reg)}
	return reg
}

// specHash hashes a registration (without its meta).
func specHash(reg *api.AgentServiceRegistration) string {
	r := *reg
	r.Meta = nil
	data, err := json.Marshal(&r)
	if err != nil {
		panic(err) // plain strings and ints always marshal
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:12])
}

// upToDate reports whether the agent's service cur, which has checks
// checks, is what reg would register.
func upToDate(cur *api.AgentService, reg *api.AgentServiceRegistration, checks int) bool {
	wantChecks := 0
	if reg.Check != nil {
		wantChecks = 1
	}
	return cur.Service == reg.Name &&
		cur.Address == reg.Address &&
		cur.Port == reg.Port &&
		slices.Equal(sortedCopy(cur.Tags), sortedCopy(reg.Tags)) &&
		cur.Meta[MetaSpec] == reg.Meta[MetaSpec] &&
		len(cur.Meta) == len(reg.Meta) &&
		checks == wantChecks
}

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func describe(in Instance) string {
	return fmt.Sprintf("%s.%s.%s.%s %s port %d", in.Service, in.Job, in.Env, in.Product, in.Address, in.Port)
}

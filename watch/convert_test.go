package watch

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/hashicorp/consul/api"

	"github.com/rugby110/glimpse/cache"
)

var glimpseTags = []string{"glimpse:env=prod", "glimpse:job=stream", "glimpse:service=http"}

// entry returns a health entry of product goku on node (nodeAddr), with the
// service's own address svcAddr ("" for none), port, tags and checks.
func entry(node, nodeAddr, svcAddr string, port int, tags []string, checks ...healthCheck) *healthEntry {
	return &healthEntry{
		Node:    &healthNode{Node: node, Address: nodeAddr},
		Service: &healthService{Address: svcAddr, Port: port, Tags: tags},
		Checks:  checks,
	}
}

func check(id, status string) healthCheck {
	return healthCheck{CheckID: id, Status: status}
}

func wantInst(node, addr string, own bool, port uint16, h cache.Health) cache.Instance {
	return cache.Instance{
		Node: node, Address: netip.MustParseAddr(addr), OwnAddress: own, Port: port, Health: h,
		Env: "prod", Job: "stream", Service: "http",
	}
}

func TestInstances(t *testing.T) {
	tests := []struct {
		name    string
		entries []*healthEntry
		want    []cache.Instance
		ignored int
	}{
		{
			name:    "node address",
			entries: []*healthEntry{entry("n1", "10.0.0.1", "", 8080, glimpseTags)},
			want:    []cache.Instance{wantInst("n1", "10.0.0.1", false, 8080, cache.Passing)},
		},
		{
			name:    "own address",
			entries: []*healthEntry{entry("n1", "10.0.0.1", "10.0.1.1", 8080, glimpseTags)},
			want:    []cache.Instance{wantInst("n1", "10.0.1.1", true, 8080, cache.Passing)},
		},
		{
			name:    "service address equal to the node's is not its own",
			entries: []*healthEntry{entry("n1", "10.0.0.1", "10.0.0.1", 8080, glimpseTags)},
			want:    []cache.Instance{wantInst("n1", "10.0.0.1", false, 8080, cache.Passing)},
		},
		{
			name:    "service address equal to the node's, once mapped",
			entries: []*healthEntry{entry("n1", "10.0.0.1", "::ffff:10.0.0.1", 8080, glimpseTags)},
			want:    []cache.Instance{wantInst("n1", "10.0.0.1", false, 8080, cache.Passing)},
		},
		{
			name:    "IPv4-mapped IPv6 service address unmapped",
			entries: []*healthEntry{entry("n1", "10.0.0.1", "::ffff:10.0.1.1", 8080, glimpseTags)},
			want:    []cache.Instance{wantInst("n1", "10.0.1.1", true, 8080, cache.Passing)},
		},
		{
			name:    "IPv4-mapped IPv6 node address unmapped",
			entries: []*healthEntry{entry("n1", "::ffff:10.0.0.1", "", 8080, glimpseTags)},
			want:    []cache.Instance{wantInst("n1", "10.0.0.1", false, 8080, cache.Passing)},
		},
		{
			name:    "IPv6",
			entries: []*healthEntry{entry("n1", "2001:db8::1", "2001:db8::2", 8080, glimpseTags)},
			want:    []cache.Instance{wantInst("n1", "2001:db8::2", true, 8080, cache.Passing)},
		},
		{
			name:    "own address on a node without an IP",
			entries: []*healthEntry{entry("n1", "node1.example", "10.0.1.1", 8080, glimpseTags)},
			want:    []cache.Instance{wantInst("n1", "10.0.1.1", true, 8080, cache.Passing)},
		},
		{
			name: "labels in lower case, node name as registered, provider kept",
			entries: []*healthEntry{entry("Web-1", "10.0.0.1", "", 8080,
				[]string{"glimpse:env=PROD", "glimpse:job=Stream", "glimpse:service=HTTP", "glimpse:provider=Bazooka", "other", "glimpse:product=goku"})},
			want: []cache.Instance{func() cache.Instance {
				in := wantInst("Web-1", "10.0.0.1", false, 8080, cache.Passing)
				in.Provider = "bazooka"
				return in
			}()},
		},
		{
			name: "tag order does not matter",
			entries: []*healthEntry{entry("n1", "10.0.0.1", "", 8080,
				[]string{"v2", "glimpse:service=http", "glimpse:env=prod", "x", "glimpse:job=stream"})},
			want: []cache.Instance{wantInst("n1", "10.0.0.1", false, 8080, cache.Passing)},
		},
		{
			name: "ignored: missing tags",
			entries: []*healthEntry{
				entry("n1", "10.0.0.1", "", 8080, nil),
				entry("n2", "10.0.0.2", "", 8080, []string{"glimpse:env=prod", "glimpse:job=stream"}),
				entry("n3", "10.0.0.3", "", 8080, []string{"glimpse:env=prod", "glimpse:service=http"}),
				entry("n4", "10.0.0.4", "", 8080, []string{"glimpse:job=stream", "glimpse:service=http"}),
				entry("n5", "10.0.0.5", "", 8080, []string{"glimpse:provider=p", "glimpse:product=goku"}),
				entry("n6", "10.0.0.6", "", 8080, []string{"Glimpse:env=prod", "glimpse:job=stream", "glimpse:service=http"}),
				entry("n7", "10.0.0.7", "", 8080, glimpseTags),
			},
			want:    []cache.Instance{wantInst("n7", "10.0.0.7", false, 8080, cache.Passing)},
			ignored: 6,
		},
		{
			name: "ignored: bad labels",
			entries: []*healthEntry{
				entry("n1", "10.0.0.1", "", 8080, []string{"glimpse:env=", "glimpse:job=stream", "glimpse:service=http"}),
				entry("n2", "10.0.0.2", "", 8080, []string{"glimpse:env=prod", "glimpse:job=st_ream", "glimpse:service=http"}),
				entry("n3", "10.0.0.3", "", 8080, []string{"glimpse:env=prod", "glimpse:job=stream", "glimpse:service=a.b"}),
				entry("n4", "10.0.0.4", "", 8080, []string{"glimpse:env=prod", "glimpse:job=stream", "glimpse:service=" + strings.Repeat("a", 64)}),
				entry("n5", "10.0.0.5", "", 8080, []string{"glimpse:env=pr od", "glimpse:job=stream", "glimpse:service=http"}),
			},
			ignored: 5,
		},
		{
			name: "ignored: no IP address, no port",
			entries: []*healthEntry{
				entry("n1", "node1.example", "", 8080, glimpseTags),
				entry("n2", "", "", 8080, glimpseTags),
				entry("n3", "10.0.0.3", "", 0, glimpseTags),
				entry("n4", "10.0.0.4", "", -1, glimpseTags),
				entry("n5", "10.0.0.5", "", 65536, glimpseTags),
				entry("n6", "10.0.0.6", "", 65535, glimpseTags),
				{Node: &healthNode{Node: "n7", Address: "10.0.0.7"}},
				{Service: &healthService{Port: 1, Tags: glimpseTags}},
			},
			want:    []cache.Instance{wantInst("n6", "10.0.0.6", false, 65535, cache.Passing)},
			ignored: 7,
		},
		{
			name: "health aggregation",
			entries: []*healthEntry{
				entry("n1", "10.0.0.1", "", 1, glimpseTags),
				entry("n2", "10.0.0.2", "", 2, glimpseTags, check("serfHealth", api.HealthPassing), check("svc", api.HealthPassing)),
				entry("n3", "10.0.0.3", "", 3, glimpseTags, check("serfHealth", api.HealthPassing), check("svc", api.HealthWarning)),
				entry("n4", "10.0.0.4", "", 4, glimpseTags, check("serfHealth", api.HealthCritical), check("svc", api.HealthPassing)),
				entry("n5", "10.0.0.5", "", 5, glimpseTags, check("serfHealth", api.HealthWarning), check("svc", api.HealthCritical)),
				entry("n6", "10.0.0.6", "", 6, glimpseTags, check("serfHealth", api.HealthPassing), check(api.NodeMaint, api.HealthCritical)),
				entry("n7", "10.0.0.7", "", 7, glimpseTags, check("svc", api.HealthPassing), check(api.ServiceMaintPrefix+"goku-n7", api.HealthCritical)),
				entry("n8", "10.0.0.8", "", 8, glimpseTags, check("svc", "bogus")),
			},
			want: []cache.Instance{
				wantInst("n1", "10.0.0.1", false, 1, cache.Passing), // no checks
				wantInst("n2", "10.0.0.2", false, 2, cache.Passing),
				wantInst("n3", "10.0.0.3", false, 3, cache.Warning),
				wantInst("n4", "10.0.0.4", false, 4, cache.Critical), // node check critical
				wantInst("n5", "10.0.0.5", false, 5, cache.Critical),
				wantInst("n6", "10.0.0.6", false, 6, cache.Critical), // node maintenance
				wantInst("n7", "10.0.0.7", false, 7, cache.Critical), // service maintenance
				wantInst("n8", "10.0.0.8", false, 8, cache.Critical), // unknown status
			},
		},
		{
			name:    "nothing",
			entries: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ignored := instances(tt.entries)
			if !slices.Equal(got, tt.want) {
				t.Errorf("instances\n got %+v\nwant %+v", got, tt.want)
			}
			if ignored != tt.ignored {
				t.Errorf("ignored = %d, want %d", ignored, tt.ignored)
			}
			if len(got)+ignored != len(tt.entries) {
				t.Errorf("%d instances + %d ignored != %d entries", len(got), ignored, len(tt.entries))
			}
		})
	}
}

// TestInstancesInterned checks that equal labels share one string.
func TestInstancesInterned(t *testing.T) {
	got, _ := instances([]*healthEntry{
		entry("n1", "10.0.0.1", "", 1, []string{"glimpse:env=prod", "glimpse:job=stream", "glimpse:service=http"}),
		entry("n2", "10.0.0.2", "", 2, []string{"glimpse:env=PROD", "glimpse:job=stream", "glimpse:service=http"}),
	})
	if len(got) != 2 {
		t.Fatalf("%d instances, want 2", len(got))
	}
	if unsafeData(got[0].Env) != unsafeData(got[1].Env) || unsafeData(got[0].Job) != unsafeData(got[1].Job) {
		t.Error("equal labels are not interned")
	}
}

func TestIsProduct(t *testing.T) {
	tests := []struct {
		name string
		tags []string
		want bool
	}{
		{"goku", []string{"glimpse:env=prod"}, true},
		{"goku", []string{"v1", "glimpse:provider=bazooka"}, true},
		{"goku", []string{"glimpse:"}, true},
		{"Goku", []string{"glimpse:env=prod"}, true},
		{"goku", nil, false},
		{"goku", []string{"v1", "primary"}, false},
		{"goku", []string{"Glimpse:env=prod"}, false},
		{"goku", []string{"xglimpse:env=prod"}, false},
		{"consul", nil, false},
		{"go_ku", []string{"glimpse:env=prod"}, false},
		{"go.ku", []string{"glimpse:env=prod"}, false},
		{"", []string{"glimpse:env=prod"}, false},
		{strings.Repeat("a", 64), []string{"glimpse:env=prod"}, false},
	}
	for _, tt := range tests {
		if got := IsProduct(tt.name, tt.tags); got != tt.want {
			t.Errorf("IsProduct(%q, %q) = %v, want %v", tt.name, tt.tags, got, tt.want)
		}
	}
}

func TestServers(t *testing.T) {
	got := servers([]*api.CatalogService{
		{Node: "s1", Address: "10.0.0.1"},
		{Node: "s2", Address: "10.0.0.2", ServiceAddress: "10.0.1.2"},
		{Node: "s3", Address: "::ffff:10.0.0.3"},
		{Node: "s4", Address: "server4.example"},
		{Node: "s5", Address: "2001:db8::5"},
	})
	want := []cache.Server{
		{Node: "s1", Address: netip.MustParseAddr("10.0.0.1")},
		{Node: "s2", Address: netip.MustParseAddr("10.0.1.2")},
		{Node: "s3", Address: netip.MustParseAddr("10.0.0.3")},
		{Node: "s5", Address: netip.MustParseAddr("2001:db8::5")},
	}
	if !slices.Equal(got, want) {
		t.Errorf("servers\n got %v\nwant %v", got, want)
	}
}

func unsafeData(s string) *byte { return unsafe.StringData(s) }

// health agrees with Consul's own aggregation for every pair of checks.
func TestHealthAgreesWithConsul(t *testing.T) {
	ids := []string{"serfHealth", "svc", api.NodeMaint, api.ServiceMaintPrefix + "x"}
	statuses := []string{api.HealthPassing, api.HealthWarning, api.HealthCritical, "bogus"}
	var all []healthCheck
	for _, id := range ids {
		for _, st := range statuses {
			all = append(all, healthCheck{CheckID: id, Status: st})
		}
	}
	for _, a := range all {
		for _, b := range all {
			for _, cs := range [][]healthCheck{nil, {a}, {a, b}} {
				var ac api.HealthChecks
				for _, c := range cs {
					ac = append(ac, &api.HealthCheck{CheckID: c.CheckID, Status: c.Status})
				}
				want := cache.Critical
				switch ac.AggregatedStatus() {
				case api.HealthPassing:
					want = cache.Passing
				case api.HealthWarning:
					want = cache.Warning
				}
				if got := health(cs); got != want {
					t.Errorf("%v: %v, Consul says %v", cs, got, want)
				}
			}
		}
	}
}

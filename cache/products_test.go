package cache

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestProductsMatchAMap: random changes to Products, a batch at a time,
// give the same contents as a plain map, and every earlier Products stays
// as it was.
func TestProductsMatchAMap(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var ps Products
	want := map[string]*Product{}
	type snap struct {
		ps   Products
		want map[string]*Product
	}
	var snaps []snap
	for round := range 300 {
		b := newProductsBuilder(ps)
		for range 1 + r.IntN(20) {
			name := fmt.Sprint("p", r.IntN(500))
			if r.IntN(4) == 0 {
				b.remove(name)
				delete(want, name)
			} else {
				p := &Product{Name: name, Index: uint64(round)}
				b.set(name, p)
				want[name] = p
			}
		}
		ps = b.done()
		w := make(map[string]*Product, len(want))
		for k, v := range want {
			w[k] = v
		}
		snaps = append(snaps, snap{ps, w})
	}
	for i, s := range snaps {
		if s.ps.Len() != len(s.want) {
			t.Fatalf("snapshot %d: %d products, want %d", i, s.ps.Len(), len(s.want))
		}
		seen := 0
		for name, p := range s.ps.All() {
			seen++
			if s.want[name] != p || s.ps.Get(name) != p {
				t.Fatalf("snapshot %d: %s is %v, want %v", i, name, p, s.want[name])
			}
		}
		if seen != len(s.want) {
			t.Fatalf("snapshot %d: All yielded %d, want %d", i, seen, len(s.want))
		}
	}
	var zero Products
	if zero.Get("x") != nil || zero.Len() != 0 {
		t.Error("the zero Products is not empty")
	}
	for range zero.All() {
		t.Error("the zero Products yields")
	}
}

package cache

import (
	"hash/maphash"
	"iter"
)

// productShards is how many parts a zone's products are split into: an
// update copies the part its product is in, a 64th of the zone.
const productShards = 64

var productSeed = maphash.MakeSeed()

// Products is a zone's products by name, immutable like the Zone holding
// it. A change makes a new Products that shares all but one shard with the
// old: the first results of 5,000 products, one by one, copy 5,000 × 78
// entries rather than 5,000 × 5,000. The zero value is empty.
type Products struct {
	shards *[productShards]map[string]*Product
	n      int
}

func shardOf(name string) int {
	return int(maphash.String(productSeed, name) % productShards)
}

// Get returns the product called name, or nil.
func (ps Products) Get(name string) *Product {
	if ps.shards == nil {
		return nil
	}
	return ps.shards[shardOf(name)][name]
}

// Len returns the number of products.
func (ps Products) Len() int { return ps.n }

// All yields every product, in no particular order.
func (ps Products) All() iter.Seq2[string, *Product] {
	return func(yield func(string, *Product) bool) {
		if ps.shards == nil {
			return
		}
		for _, shard := range ps.shards {
			for name, p := range shard {
				if !yield(name, p) {
					return
				}
			}
		}
	}
}

// productsBuilder makes one new Products from an old one, copying each
// shard at most once however many products of it change.
type productsBuilder struct {
	ps     Products
	copied [productShards]bool
	own    bool // ps.shards is a copy of the old array
}

func newProductsBuilder(old Products) *productsBuilder {
	return &productsBuilder{ps: old}
}

func (b *productsBuilder) shard(name string) map[string]*Product {
	if !b.own {
		var a [productShards]map[string]*Product
		if b.ps.shards != nil {
			a = *b.ps.shards
		}
		b.ps.shards, b.own = &a, true
	}
	i := shardOf(name)
	if !b.copied[i] {
		old := b.ps.shards[i]
		m := make(map[string]*Product, len(old)+1)
		for k, v := range old {
			m[k] = v
		}
		b.ps.shards[i], b.copied[i] = m, true
	}
	return b.ps.shards[i]
}

// set sets the product called name.
func (b *productsBuilder) set(name string, p *Product) {
	s := b.shard(name)
	if _, ok := s[name]; !ok {
		b.ps.n++
	}
	s[name] = p
}

// remove removes the product called name.
func (b *productsBuilder) remove(name string) {
	if b.ps.Get(name) == nil {
		return
	}
	delete(b.shard(name), name)
	b.ps.n--
}

// done returns the new Products.
func (b *productsBuilder) done() Products { return b.ps }

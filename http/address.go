package httpapi

import (
	"github.com/rugby110/glimpse/api"
	"github.com/rugby110/glimpse/cache"
)

// ParseAddress parses an address <service>.<job>.<env>.<product>.<zone> as
// the HTTP API takes it (api.ParseAddress) into a cache query, whose fields
// are in lower case. The error says what is wrong, in words fit for an API
// client.
func ParseAddress(s string) (cache.Query, error) {
	a, err := api.ParseAddress(s)
	if err != nil {
		return cache.Query{}, err
	}
	return cache.Query{Service: a.Service, Job: a.Job, Env: a.Env, Product: a.Product, Zone: a.Zone}, nil
}

// queryName returns the address a query names, in its dotted form.
func queryName(q cache.Query) string {
	return q.Service + "." + q.Job + "." + q.Env + "." + q.Product + "." + q.Zone
}

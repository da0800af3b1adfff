package api

// ProviderBody is the whole desired state of one provider on a host, as
// sent in PUT /v1/providers/<name> (and written to <name>.json in the
// agent's providers directory). docs/providers.md has the rules.
type ProviderBody struct {
	Instances []ProviderInstance `json:"instances"`
}

// ProviderInstance is one service instance a provider runs. Service, Job,
// Env and Product are glimpse labels; Address is an IP, or empty for the
// Consul node's address.
type ProviderInstance struct {
	Service string         `json:"service"`
	Job     string         `json:"job"`
	Env     string         `json:"env"`
	Product string         `json:"product"`
	Port    int            `json:"port"`
	Address string         `json:"address,omitempty"`
	Check   *ProviderCheck `json:"check,omitempty"`
}

// ProviderCheck is the optional health check of an instance, run by the
// Consul agent.
type ProviderCheck struct {
	// Type is "tcp", "http" or "ttl".
	Type string `json:"type"`
	// Target is the URL of an http check or the host:port of a tcp check.
	// Empty means the instance itself: http://address:port/ or
	// address:port. A ttl check has none.
	Target string `json:"target,omitempty"`
	// Interval and Timeout are Go durations ("10s") of tcp and http
	// checks. Interval defaults to 10s, Timeout to Consul's default.
	Interval string `json:"interval,omitempty"`
	Timeout  string `json:"timeout,omitempty"`
	// TTL is the Go duration of a ttl check; required for that type only.
	TTL string `json:"ttl,omitempty"`
}

// ProviderSummary describes one provider in GET /v1/providers.
type ProviderSummary struct {
	Provider string `json:"provider"`
	// Source is "http" or "file": where the recorded state came from.
	Source string `json:"source"`
	// Instances in the recorded state.
	Instances int `json:"instances"`
	// Deleting is set while a deletion waits for the Consul agent.
	Deleting bool `json:"deleting,omitempty"`
	// FileError is what is wrong with the provider's file, whose previous
	// state is kept meanwhile.
	FileError string `json:"file_error,omitempty"`
	// Error is set when the record itself cannot be read.
	Error string `json:"error,omitempty"`
}

// ProviderPut is the answer to PUT /v1/providers/<name>.
type ProviderPut struct {
	Provider  string `json:"provider"`
	Instances int    `json:"instances"`
}

// ProviderDeleted is the answer to DELETE /v1/providers/<name>.
type ProviderDeleted struct {
	Provider string `json:"provider"`
	Deleted  bool   `json:"deleted"`
}

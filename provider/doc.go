// Package provider is glimpse's write path to Consul: it validates the
// desired state a provider states (the whole set of instances it runs on this
// host, see SPEC §5), records it durably, and makes the local Consul agent's
// registrations carrying `glimpse:provider=<name>` equal to it.
//
// It is its own top-level package, apart from watch/ and cache/, because it
// is the one place that writes to Consul. Data in glimpse flows one way,
// Consul → watch → cache → readers; registrations made here come back
// through the watchers like any other change, so Consul stays the single
// source of truth and no reader ever sees provider state that Consul has not
// accepted. Keeping the write path separate keeps that direction visible:
// nothing under watch/, cache/, dns/ or http/ calls Consul's write endpoints.
//
// The package has three parts:
//
//   - [Parse] and [Body.Validate] check a provider's body (from HTTP or a
//     file) completely before anything is applied, with errors that name the
//     bad field ([ValidationError]).
//   - [Store] keeps each provider's last accepted body under a directory,
//     written atomically and durably, so it can be applied again after a
//     restart of glimpse or of the Consul agent.
//   - [Syncer] applies a body to the local Consul agent: register what is
//     new or changed, deregister what is gone, never touch registrations
//     without that provider's exact tag.
package provider

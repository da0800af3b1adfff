package httpapi

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"

	"glimpse/provider"
)

// providersAPI serves /v1/providers/{provider}.
type providersAPI struct {
	m           *provider.Manager
	allowRemote bool
}

func (s *Server) registerProviders(opts Options) {
	p := &providersAPI{m: opts.Providers, allowRemote: opts.ProviderAllowRemote}
	s.mux.Handle("GET /v1/providers", s.instrument("providers", p.guard(p.list)))
	s.mux.Handle("PUT /v1/providers/{provider}", s.instrument("providers", p.guard(named(p.put))))
	s.mux.Handle("GET /v1/providers/{provider}", s.instrument("providers", p.guard(named(p.get))))
	s.mux.Handle("DELETE /v1/providers/{provider}", s.instrument("providers", p.guard(named(p.delete))))
}

// guard answers 403 to non-loopback clients unless allowed and 404 when no
// manager is configured.
func (p *providersAPI) guard(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !p.allowRemote && !loopback(r.RemoteAddr) {
			writeError(w, http.StatusForbidden, "the providers API only answers loopback clients (see -providers.allow-remote)")
			return
		}
		if p.m == nil {
			writeError(w, http.StatusNotFound, "the providers API is not configured on this agent")
			return
		}
		h(w, r)
	}
}

// named passes h the request's provider name, or answers 400 for a bad one.
func named(h func(w http.ResponseWriter, r *http.Request, name string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name, err := provider.CheckName(r.PathValue("provider"))
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		h(w, r, name)
	}
}

func loopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func (p *providersAPI) put(w http.ResponseWriter, r *http.Request, name string) {
	b, err := provider.Parse(http.MaxBytesReader(w, r.Body, provider.MaxBody+1), provider.MaxBody)
	if err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.Is(err, provider.ErrTooLarge) || errors.As(err, &mbe):
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", provider.MaxBody))
		default:
			var ve *provider.ValidationError
			if errors.As(err, &ve) {
				writeError(w, http.StatusBadRequest, err.Error())
			} else {
				writeError(w, http.StatusBadRequest, "read body: "+err.Error())
			}
		}
		return
	}
	if err := p.m.Put(r.Context(), name, b); err != nil {
		p.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"provider": name, "instances": len(b.Instances)})
}

func (p *providersAPI) get(w http.ResponseWriter, r *http.Request, name string) {
	b, err := p.m.Get(name)
	if err != nil {
		p.fail(w, err)
		return
	}
	if b.Instances == nil {
		b.Instances = []provider.Instance{}
	}
	writeJSON(w, http.StatusOK, b)
}

// list answers GET /v1/providers: every recorded provider, with where its
// state comes from and what is wrong with its file, if anything.
func (p *providersAPI) list(w http.ResponseWriter, r *http.Request) {
	l, err := p.m.List()
	if err != nil {
		p.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, l)
}

func (p *providersAPI) delete(w http.ResponseWriter, r *http.Request, name string) {
	if err := p.m.Delete(r.Context(), name); err != nil {
		p.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"provider": name, "deleted": true})
}

func (p *providersAPI) fail(w http.ResponseWriter, err error) {
	var ve *provider.ValidationError
	switch {
	case errors.Is(err, provider.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.As(err, &ve):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, provider.ErrFileManaged):
		writeError(w, http.StatusConflict, err.Error()+" (change or remove its file instead)")
	case errors.Is(err, provider.ErrConsul):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

package httpapi

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/rugby110/glimpse/provider"
)

// providersAPI serves /v1/providers/{provider}.
//
// Anyone who may reach it reads it. A write (PUT, DELETE) is made by an
// identity: the local user at the other end of the providers socket, as
// the kernel says, or over TCP the name of a bearer token from the tokens
// file, which also lists the providers that token may write. A write with
// neither is refused, and so is any write a browser could have been made
// to send: one carrying an Origin, or whose Host is a name other than
// localhost (DNS rebinding). So a web page, a Consul health check (run by
// the Consul agent over loopback, without a token) or another local user
// can no longer change what a provider registered.
type providersAPI struct {
	m           *provider.Manager
	allowRemote bool
	tokens      *provider.Tokens
	// host is the TCP listener's own host, which a request's Host may
	// name.
	host string
	// tcpBodies and sockBodies are the turns to read a body, per listener.
	tcpBodies, sockBodies chan struct{}
	log                   *zap.Logger
}

func (s *Server) registerProviders(opts Options) {
	host, _, _ := net.SplitHostPort(s.ln.Addr().String())
	p := &providersAPI{m: opts.Providers, allowRemote: opts.ProviderAllowRemote, tokens: opts.ProviderTokens, host: host,
		tcpBodies: make(chan struct{}, ProviderBodies), sockBodies: make(chan struct{}, ProviderBodies), log: opts.Log}
	if p.log == nil {
		p.log = zap.NewNop()
	}
	s.mux.Handle("GET /v1/providers", s.instrument("providers", p.guard(p.list)))
	s.mux.Handle("PUT /v1/providers/{provider}", s.instrument("providers", p.guard(named(p.writer(p.put)))))
	s.mux.Handle("GET /v1/providers/{provider}", s.instrument("providers", p.guard(named(p.get))))
	s.mux.Handle("DELETE /v1/providers/{provider}", s.instrument("providers", p.guard(named(p.writer(p.delete)))))
}

// guard answers 403 to non-loopback TCP clients unless allowed and 404 when
// no manager is configured.
func (p *providersAPI) guard(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, local := peerOf(r.Context())
		if !p.allowRemote && !local && !loopback(r.RemoteAddr) {
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

// writer passes h the identity a write is made as, or refuses it with 403
// and why.
func (p *providersAPI) writer(h func(w http.ResponseWriter, r *http.Request, name string, who provider.Identity)) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, r *http.Request, name string) {
		if o := r.Header.Get("Origin"); o != "" {
			writeError(w, http.StatusForbidden, fmt.Sprintf("a request from a web page (Origin %q) never writes providers", o))
			return
		}
		if !p.hostAllowed(r.Host) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("Host %q is neither this agent's address, an IP address nor localhost: providers are not written through a DNS name (a browser's DNS rebinding looks like this)", r.Host))
			return
		}
		if pr, ok := peerOf(r.Context()); ok {
			h(w, r, name, provider.UID(pr.uid))
			return
		}
		token, ok := bearer(r)
		if !ok {
			writeError(w, http.StatusForbidden, "writes over TCP need a bearer token from the agent's -providers.tokens file; local providers write through the socket (-providers.socket)")
			return
		}
		who, allowed, ok := p.tokens.Lookup(token, name)
		switch {
		case !ok:
			writeError(w, http.StatusForbidden, "the bearer token is not in the agent's -providers.tokens file")
		case !allowed:
			writeError(w, http.StatusForbidden, fmt.Sprintf("token %q may not write provider %q (see its patterns in -providers.tokens)", strings.TrimPrefix(who.Owner, "token:"), name))
		default:
			h(w, r, name, who)
		}
	}
}

// bearer returns the request's bearer token.
func bearer(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// hostAllowed reports whether a request's Host may write: the listener's
// own host, an IP literal, or localhost, with any port. A browser sends
// the name in the page's address, so a page served from a DNS name that
// was made to point to 127.0.0.1 is refused.
func (p *providersAPI) hostAllowed(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "" {
		return false
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	return strings.EqualFold(host, "localhost") || strings.EqualFold(host, "localhost.") || host == p.host
}

func loopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func (p *providersAPI) put(w http.ResponseWriter, r *http.Request, name string, who provider.Identity) {
	turns := p.tcpBodies
	if _, sock := peerOf(r.Context()); sock {
		turns = p.sockBodies
	}
	wait := time.NewTimer(ProviderBodyWait)
	defer wait.Stop()
	select {
	case turns <- struct{}{}:
		defer func() { <-turns }()
	case <-wait.C:
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("%d provider bodies are being received; try again", ProviderBodies))
		return
	case <-r.Context().Done():
		return
	}
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
	if err := p.m.Put(r.Context(), name, b, who); err != nil {
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

func (p *providersAPI) delete(w http.ResponseWriter, r *http.Request, name string, who provider.Identity) {
	if err := p.m.Delete(r.Context(), name, who); err != nil {
		p.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"provider": name, "deleted": true})
}

// fail answers for err: 4xx for the caller's mistakes, 503 for Consul's,
// and 500, logged, for the agent's own faults (the data directory); each
// is counted in glimpse_http_requests_total by code.
func (p *providersAPI) fail(w http.ResponseWriter, err error) {
	var ve *provider.ValidationError
	switch {
	case errors.Is(err, provider.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, provider.ErrNotOwner):
		writeError(w, http.StatusForbidden, err.Error())
	case errors.As(err, &ve):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, provider.ErrFileManaged):
		writeError(w, http.StatusConflict, err.Error()+" (change or remove its file instead)")
	case errors.Is(err, provider.ErrConsul):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		p.log.Error("providers API: the agent's own fault", zap.Error(err))
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

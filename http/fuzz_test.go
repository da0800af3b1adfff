package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"
)

// FuzzLookup sends GET /v1/lookup/<address>?<query> for any address and
// query a client could send, long-polls included (each request's context
// ends after 20 ms, as a client giving up would). Every request gets a JSON
// answer with a status the API documents: 200, 400, 404 or 405.
func FuzzLookup(f *testing.F) {
	for _, s := range [][2]string{
		{"http.stream.prod.goku.dc1", ""},
		{"HTTP.Stream.prod.goku.DC1", "health=warning"},
		{"*.stream.prod.goku.dc1", "health=any"},
		{"*.*.*.goku.dc1", ""},
		{"http.stream.prod.goku.dc1", "index=1&wait=1s"},
		{"http.stream.prod.goku.dc1", "index=99999999999999999999&wait=-1s"},
		{"http.stream.prod.goku.dc1", "wait=1s"},
		{"http.stream.prod.goku.nope", ""},
		{"http..prod.goku.dc1", ""},
		{"http.stream.prod.goku.dc1.", ""},
		{"", ""},
		{"a/b", ""},
		{"%00.stream.prod.goku.dc1", ""},
		{"http.stream.prod.goku.dc1", "health=bogus&health=passing"},
		{"*.*.*.*.*", ""},
	} {
		f.Add(s[0], s[1])
	}
	ts := newTestServer(f, testCache())
	f.Fuzz(func(t *testing.T, address, query string) {
		u, err := url.ParseRequestURI("/v1/lookup/" + address + "?" + query)
		if err != nil {
			return // not a request a server would route
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		req := (&http.Request{Method: http.MethodGet, URL: u, RequestURI: u.RequestURI(), Host: "glimpse",
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}, Body: http.NoBody}).WithContext(ctx)
		rec := httptest.NewRecorder()
		ts.s.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed:
		default:
			t.Fatalf("%s: status %d", u, rec.Code)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("%s: Content-Type %q", u, ct)
		}
		var v any
		if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
			t.Fatalf("%s: %v in %q", u, err, rec.Body)
		}
	})
}

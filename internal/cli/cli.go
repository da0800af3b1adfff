// Package cli is the glimpse command: lookups, watches, zones, topology and
// providers against a glimpse-agent, through package client. cmd/glimpse
// runs it; the tests run it in process.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"

	"github.com/rugby110/glimpse/api"
	"github.com/rugby110/glimpse/client"
	"github.com/rugby110/glimpse/internal/version"
)

const usage = `usage: glimpse [-http-addr ADDR] [-token TOKEN | -socket PATH] COMMAND [ARGS]
       glimpse -version

commands:
  lookup [-health H] ADDRESS          the instances of ADDRESS, as JSON
  watch [-health H] ADDRESS...        one JSON message per line as the agent
                                      pushes it (snapshot, update), through
                                      reconnects and agent restarts
  watch -exec CMD ADDRESS...          run CMD (with sh -c) with the current
                                      instances of every address on stdin, as
                                      JSON, once synced and at each change
  zones                               the zones and their sync state, as JSON
  topology [-zone Z]                  the zone's products as a tree
  providers list                      the providers, as JSON
  providers get NAME                  a provider's recorded instances, as JSON
  providers put NAME [FILE]           state a provider's instances (FILE or
                                      stdin: {"instances": [...]})
  providers delete NAME               remove a provider and its instances

The agent's address: -http-addr, else $GLIMPSE_HTTP_ADDR, else 127.0.0.1:5960.
Provider writes need -socket (the agent's providers socket) or -token (a token
of its -providers.tokens file; also $GLIMPSE_TOKEN).
`

// Run runs the glimpse command with args (without the program name) and
// returns its exit status: 0, 1 for an error (one line on stderr), 2 for a
// usage error.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("glimpse", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr := fs.String("http-addr", "", "")
	token := fs.String("token", os.Getenv("GLIMPSE_TOKEN"), "")
	socket := fs.String("socket", "", "")
	showVersion := fs.Bool("version", false, "")
	err := fs.Parse(args)
	if err == nil && *showVersion {
		fmt.Fprintln(stdout, version.String("glimpse"))
		return 0
	}
	if err != nil || fs.NArg() == 0 {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return 0
		}
		if err != nil {
			fmt.Fprintf(stderr, "glimpse: %v\n", err)
		}
		fmt.Fprint(stderr, usage)
		return 2
	}
	var opts []client.Option
	if *socket != "" {
		opts = append(opts, client.WithSocket(*socket))
	}
	if *token != "" {
		opts = append(opts, client.WithToken(*token))
	}
	c, err := client.New(*addr, opts...)
	if err != nil {
		fmt.Fprintf(stderr, "glimpse: %v\n", err)
		return 2
	}
	r := &runner{c: c, stdin: stdin, stdout: stdout, stderr: stderr}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	var run func(context.Context, []string) error
	switch cmd {
	case "lookup":
		run = r.lookup
	case "watch":
		run = r.watch
	case "zones":
		run = r.zones
	case "topology":
		run = r.topology
	case "providers":
		run = r.providers
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "glimpse: unknown command %q (try glimpse help)\n", cmd)
		return 2
	}
	if err := run(ctx, rest); err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "glimpse %s: %v\n", cmd, err)
			return 2
		}
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return 0 // interrupted: a watch ends this way
		}
		fmt.Fprintf(stderr, "glimpse %s: %s\n", cmd, oneLine(err))
		return 1
	}
	return 0
}

// usageError is a command used wrongly (exit status 2).
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// oneLine returns err's message on one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

type runner struct {
	c      *client.Client
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

func (r *runner) json(v any) error {
	enc := json.NewEncoder(r.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// flags parses a command's own flags, which come before its arguments.
func flags(name string, args []string, define func(*flag.FlagSet)) ([]string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	define(fs)
	if err := fs.Parse(args); err != nil {
		return nil, usageError{err}
	}
	return fs.Args(), nil
}

func (r *runner) lookup(ctx context.Context, args []string) error {
	var health string
	args, err := flags("lookup", args, func(fs *flag.FlagSet) { fs.StringVar(&health, "health", "", "") })
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usagef("want one address, got %d arguments", len(args))
	}
	l, err := r.c.Lookup(ctx, args[0], health)
	if err != nil {
		return err
	}
	return r.json(l)
}

func (r *runner) watch(ctx context.Context, args []string) error {
	var health, execCmd string
	args, err := flags("watch", args, func(fs *flag.FlagSet) {
		fs.StringVar(&health, "health", "", "")
		fs.StringVar(&execCmd, "exec", "", "")
	})
	if err != nil {
		return err
	}
	if len(args) == 0 {
		return usagef("want at least one address")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := r.c.Watch(ctx, args, client.WatchOptions{Health: health})
	if err != nil {
		return err
	}
	enc := json.NewEncoder(r.stdout)
	synced := false
	for e := range w.Events() {
		switch e.Type {
		case client.Snapshot, client.Update:
			if execCmd == "" {
				typ := api.MessageUpdate
				if e.Type == client.Snapshot {
					typ = api.MessageSnapshot
				}
				in := e.Instances
				if in == nil {
					in = []api.Instance{}
				}
				if err := enc.Encode(api.Message{Type: typ, Index: e.Index, Address: e.Address, Instances: in}); err != nil {
					return err
				}
				continue
			}
			if synced {
				if err := r.exec(ctx, execCmd, w.State()); err != nil {
					return err
				}
			}
		case client.Synced:
			if execCmd != "" && !synced {
				synced = true
				if err := r.exec(ctx, execCmd, w.State()); err != nil {
					return err
				}
			}
		case client.Disconnected:
			fmt.Fprintf(r.stderr, "glimpse watch: %s (reconnecting)\n", oneLine(e.Err))
		}
	}
	return ctx.Err()
}

// exec runs cmd with sh -c and the state on its stdin, as JSON; its output
// is the command's.
func (r *runner) exec(ctx context.Context, cmd string, state map[string][]api.Instance) error {
	b, err := json.Marshal(state)
	if err != nil {
		return err
	}
	c := exec.CommandContext(ctx, "/bin/sh", "-c", cmd)
	c.Stdin = strings.NewReader(string(b) + "\n")
	c.Stdout, c.Stderr = r.stdout, r.stderr
	if err := c.Run(); err != nil && ctx.Err() == nil {
		fmt.Fprintf(r.stderr, "glimpse watch: %s: %v\n", cmd, err)
	}
	return nil
}

func (r *runner) zones(ctx context.Context, args []string) error {
	if len(args) != 0 {
		return usagef("takes no arguments")
	}
	z, err := r.c.Zones(ctx)
	if err != nil {
		return err
	}
	return r.json(z)
}

func (r *runner) topology(ctx context.Context, args []string) error {
	var zone string
	args, err := flags("topology", args, func(fs *flag.FlagSet) { fs.StringVar(&zone, "zone", "", "") })
	if err != nil {
		return err
	}
	if len(args) != 0 {
		return usagef("takes no arguments besides -zone")
	}
	t, err := r.c.Topology(ctx, zone)
	if err != nil {
		return err
	}
	printTree(r.stdout, t)
	return nil
}

// printTree prints a topology as a tree: product, env, job, service with
// its health counts; a product the agent does not hold is marked so.
func printTree(w io.Writer, t *api.Topology) {
	state := "synced"
	if !t.Synced {
		state = "not synced"
	}
	fmt.Fprintf(w, "%s (%s, index %d)\n", t.Zone, state, t.Index)
	for _, p := range sorted(t.Products) {
		pt := t.Products[p]
		note := ""
		switch {
		case pt.Error != "":
			note = " (failing: " + pt.Error + ")"
		case !pt.Watched:
			note = " (not read on this host)"
		}
		fmt.Fprintf(w, "└─ %s%s\n", p, note)
		for _, e := range sorted(pt.Envs) {
			fmt.Fprintf(w, "   └─ %s\n", e)
			for _, j := range sorted(pt.Envs[e].Jobs) {
				fmt.Fprintf(w, "      └─ %s\n", j)
				services := pt.Envs[e].Jobs[j].Services
				for _, s := range sorted(services) {
					c := services[s]
					fmt.Fprintf(w, "         └─ %s  passing %d, warning %d, critical %d\n", s, c.Passing, c.Warning, c.Critical)
				}
			}
		}
	}
}

func sorted[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (r *runner) providers(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("want list, get, put or delete")
	}
	verb, args := args[0], args[1:]
	need := map[string][2]int{"list": {0, 0}, "get": {1, 1}, "put": {1, 2}, "delete": {1, 1}}
	n, ok := need[verb]
	if !ok {
		return usagef("unknown verb %q: want list, get, put or delete", verb)
	}
	if len(args) < n[0] || len(args) > n[1] {
		return usagef("%s: wrong number of arguments", verb)
	}
	switch verb {
	case "list":
		l, err := r.c.Providers(ctx)
		if err != nil {
			return err
		}
		if l == nil {
			l = []api.ProviderSummary{}
		}
		return r.json(l)
	case "get":
		b, err := r.c.Provider(ctx, args[0])
		if err != nil {
			return err
		}
		return r.json(b)
	case "put":
		in := r.stdin
		if len(args) == 2 && args[1] != "-" {
			f, err := os.Open(args[1])
			if err != nil {
				return err
			}
			defer f.Close()
			in = f
		}
		var b api.ProviderBody
		dec := json.NewDecoder(in)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&b); err != nil {
			return fmt.Errorf("the provider's body: %w", err)
		}
		res, err := r.c.PutProvider(ctx, args[0], &b)
		if err != nil {
			return err
		}
		return r.json(res)
	default:
		res, err := r.c.DeleteProvider(ctx, args[0])
		if err != nil {
			return err
		}
		return r.json(res)
	}
}

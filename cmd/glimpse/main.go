// Command glimpse asks a glimpse-agent: lookups, watches, zones, topology
// and providers. Run glimpse help for its commands; docs/client.md and the
// README show it at work.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/rugby110/glimpse/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Command demo runs regcap end to end on this machine, offline: a local
// registry with a sample image, a worker, and the three capabilities
// asked through the client, a miss then a hit each. With --keep it keeps
// serving until interrupted.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/regcap/regcap/internal/demo"
	"github.com/regcap/regcap/internal/worker"
)

func main() {
	keep := flag.Bool("keep", false, "keep serving after the demo, until interrupted, to try the requester against it")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log, err := worker.NewLogger("error", "console", os.Stderr)
	if err != nil {
		log = zap.NewNop()
	}
	if err := demo.Run(ctx, os.Stdout, log, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

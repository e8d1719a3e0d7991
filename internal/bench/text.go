package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/regcap/regcap/contract"
)

// WriteText writes rep as a table: per concurrency, regcap, the echo floor
// and their ratio.
func WriteText(w io.Writer, rep *Report) {
	how := fmt.Sprintf("%gs", rep.Seconds)
	if rep.Requests > 0 {
		how = fmt.Sprintf("%d requests", rep.Requests)
	}
	if rep.Requests == 1 {
		how = "1 request"
	}
	images := "images"
	if rep.Images == 1 {
		images = "image"
	}
	fmt.Fprintf(w, "bench: %s, %d %s, %s cache, reply %d B, %s per run", rep.Function, rep.Images, images, rep.Mode, rep.ReplyBytes, how)
	if rep.Warmup > 0 {
		fmt.Fprintf(w, " after %gs warm-up", rep.Warmup)
	}
	if rep.Runs > 1 {
		fmt.Fprintf(w, ", median of %d runs", rep.Runs)
	}
	fmt.Fprintln(w)
	if rep.Mode == "cold" && len(rep.Levels) > 0 && rep.Levels[0].Echo != nil {
		fmt.Fprintf(w, "every regcap request asks for a new tag (a miss and a registry fetch); the echo runs %.3gs per run\n", rep.Levels[0].Echo.Seconds)
	}
	if rep.Interrupted {
		fmt.Fprintln(w, "interrupted: figures cover the runs that finished")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "conc\ttarget\treq/s\tp50\tp90\tp99\tmax\terrors\tcache\t")
	for _, l := range rep.Levels {
		row(tw, l.Concurrency, "regcap", l.Regcap)
		if l.Echo != nil {
			row(tw, l.Concurrency, "echo", *l.Echo)
			fmt.Fprintf(tw, "%d\tregcap/echo\t%.2f\t%.2fx\t\t%.2fx\t\t\t\t\n", l.Concurrency, l.Ratio.Throughput, l.Ratio.P50, l.Ratio.P99)
		}
		if l.Head != nil {
			row(tw, l.Concurrency, "raw HEAD", *l.Head)
			fmt.Fprintf(tw, "%d\tregcap/HEAD\t%.2f\t%.2fx\t\t%.2fx\t\t\t\t\n", l.Concurrency, l.HeadRatio.Throughput, l.HeadRatio.P50, l.HeadRatio.P99)
		}
		if l.Relay != nil {
			row(tw, l.Concurrency, "NATS relay", *l.Relay)
			fmt.Fprintf(tw, "%d\tregcap/relay\t%.2f\t%.2fx\t\t%.2fx\t\t\t\t\n", l.Concurrency, l.RelayRatio.Throughput, l.RelayRatio.P50, l.RelayRatio.P99)
		}
	}
	_ = tw.Flush()
	for _, l := range rep.Levels {
		if l.Regcap.FirstError != "" {
			fmt.Fprintf(w, "c=%d regcap: first error: %s\n", l.Concurrency, l.Regcap.FirstError)
		}
		if l.Echo != nil && l.Echo.FirstError != "" {
			fmt.Fprintf(w, "c=%d echo: first error: %s\n", l.Concurrency, l.Echo.FirstError)
		}
		if l.Head != nil && l.Head.FirstError != "" {
			fmt.Fprintf(w, "c=%d raw HEAD: first error: %s\n", l.Concurrency, l.Head.FirstError)
		}
		if l.Relay != nil && l.Relay.FirstError != "" {
			fmt.Fprintf(w, "c=%d NATS relay: first error: %s\n", l.Concurrency, l.Relay.FirstError)
		}
	}
}

func row(w io.Writer, c int, target string, s Stats) {
	fmt.Fprintf(w, "%d\t%s\t%.0f\t%s\t%s\t%s\t%s\t%d\t%s\t\n", c, target, s.Throughput,
		short(s.P50), short(s.P90), short(s.P99), short(s.Max), s.Errors, cacheSummary(s.Cache))
}

// short prints a latency with three significant digits at most.
func short(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
}

func cacheSummary(c map[contract.Outcome]int) string {
	if len(c) == 0 {
		return "-"
	}
	keys := make([]contract.Outcome, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s:%d", k, c[k])
	}
	return strings.Join(parts, ",")
}

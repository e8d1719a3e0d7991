package prefetch

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// Progress shows a run's progress: Add is called once per Result (never
// concurrently), Stop once at the end.
type Progress interface {
	Add(Result)
	Stop()
}

// NewBar draws a progress bar on w, a terminal.
func NewBar(w io.Writer, total int) Progress {
	return &bar{pb: progressbar.NewOptions(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("prefetch"),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("req"),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionFullWidth(),
	)}
}

type bar struct {
	pb     *progressbar.ProgressBar
	failed int
}

func (b *bar) Add(r Result) {
	if r.Err != nil {
		b.failed++
		b.pb.Describe(fmt.Sprintf("prefetch (%d failed)", b.failed))
	}
	_ = b.pb.Add(1)
}

func (b *bar) Stop() {
	// Clear the bar (OptionClearOnFinish) so the summary starts on a clean
	// line, also when interrupted.
	_ = b.pb.Finish()
}

// NewLines prints a progress line on w every interval (which must be
// positive), for logs and CI where a redrawn bar would be noise.
func NewLines(w io.Writer, total int, interval time.Duration) Progress {
	l := &lines{w: w, total: total, start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	go l.loop(interval)
	return l
}

type lines struct {
	w     io.Writer
	total int
	start time.Time

	mu           sync.Mutex
	count, fails int

	stop, done chan struct{}
	once       sync.Once
}

func (l *lines) Add(r Result) {
	l.mu.Lock()
	l.count++
	if r.Err != nil {
		l.fails++
	}
	l.mu.Unlock()
}

func (l *lines) loop(interval time.Duration) {
	defer close(l.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			l.mu.Lock()
			n, f := l.count, l.fails
			l.mu.Unlock()
			el := time.Since(l.start)
			fmt.Fprintf(l.w, "prefetch: %d/%d done, %d failed, %s elapsed, %.0f/s\n",
				n, l.total, f, el.Round(time.Second), float64(n)/el.Seconds())
		case <-l.stop:
			return
		}
	}
}

func (l *lines) Stop() {
	l.once.Do(func() { close(l.stop) })
	<-l.done
}

// WriteText writes r for a human: totals, cache outcome, failures by code
// and then each failure (at most maxFailures of them).
func WriteText(w io.Writer, r *Report, maxFailures int) {
	done := r.OK + r.Failed
	fmt.Fprintf(w, "prefetch: %s × %s = %s in %s (%.1f/s)\n",
		count(r.Images, "image"), count(len(r.Functions), "function"), count(r.Total, "request"), r.Elapsed.Round(time.Millisecond), r.Rate)
	if r.Interrupted {
		fmt.Fprintf(w, "  interrupted: %d done, %d skipped\n", done, r.Skipped)
	}
	fmt.Fprintf(w, "  ok       %d (cache hit %d, fetched %d, shared %d)\n", r.OK, r.Hits, r.Fetched, r.Shared)
	if r.Stale > 0 {
		fmt.Fprintf(w, "  stale    %d: served past their TTL because the registry failed; the cache is not fresh\n", r.Stale)
	}
	fmt.Fprintf(w, "  failed   %d", r.Failed)
	if len(r.ByCode) > 0 {
		codes := make([]string, 0, len(r.ByCode))
		for c := range r.ByCode {
			codes = append(codes, c)
		}
		sort.Strings(codes)
		parts := make([]string, len(codes))
		for i, c := range codes {
			parts[i] = fmt.Sprintf("%s: %d", c, r.ByCode[c])
		}
		fmt.Fprintf(w, " (%s)", strings.Join(parts, ", "))
	}
	fmt.Fprintln(w)
	if r.Retries > 0 {
		fmt.Fprintf(w, "  retries  %d\n", r.Retries)
	}
	for i, f := range r.Failures {
		if i == maxFailures {
			fmt.Fprintf(w, "  … and %d more (-o json lists them all)\n", len(r.Failures)-i)
			break
		}
		code := f.kind
		switch {
		case f.Code != 0:
			code = fmt.Sprint(f.Code)
		case code == "":
			code = codeUnreachable
		}
		// The worker's message starts with the image it understood; said
		// once when that is the reference as given.
		msg := strings.TrimPrefix(f.Message, f.Reference+": ")
		fmt.Fprintf(w, "  %s %s %s: %s\n", code, strings.TrimPrefix(f.Function, "v1/"), f.Reference, msg)
	}
}

// count says "1 image", "2 images".
func count(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

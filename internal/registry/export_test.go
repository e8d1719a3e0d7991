package registry

import "time"

// WithClock sets the clock token expiry is judged by.
func WithClock(now func() time.Time) Option { return func(c *Puller) { c.now = now } }

// WithMaxHosts sets how many hosts keep a transport.
func WithMaxHosts(n int) TransportsOption { return func(t *Transports) { t.maxHosts = n } }

// Hosts is how many hosts keep a transport now.
func (t *Transports) Hosts() int {
	t.hosts.CleanUp()
	return t.hosts.EstimatedSize()
}

// NumericIPv4 is numericIPv4, for its table test.
var NumericIPv4 = numericIPv4

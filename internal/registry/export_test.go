package registry

import "time"

// WithClock sets the clock token expiry is judged by.
func WithClock(now func() time.Time) Option { return func(c *Client) { c.now = now } }

package worker

import (
	"net/url"
	"strings"
)

// redactURL hides the passwords of a URL, or of a comma-separated list
// of them (NATS_URL), for messages: the user-info password and any query
// parameter naming one (a Sentinel URL's password=…).
func redactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil {
			if strings.ContainsAny(p, "@") || strings.Contains(strings.ToLower(p), "password") {
				parts[i] = "<unparsable URL>" // it may hold a password
			}
			continue
		}
		if q := u.Query(); len(q) > 0 {
			for k := range q {
				if strings.Contains(strings.ToLower(k), "password") {
					q.Set(k, "xxxxx")
				}
			}
			u.RawQuery = q.Encode()
		}
		parts[i] = u.Redacted()
	}
	return strings.Join(parts, ",")
}

package contract

import "unicode/utf8"

// Bound keeps msg on one line of at most MaxMessage bytes, for an error
// reply's header: control characters become spaces, and a longer message
// is cut at a rune boundary and marked with an ellipsis.
func Bound(msg string) string {
	clean := len(msg) <= MaxMessage
	for i := 0; clean && i < len(msg); i++ {
		clean = !isControl(msg[i])
	}
	if clean {
		return msg // the common case costs no allocation
	}
	b := []byte(msg)
	for i, c := range b {
		if isControl(c) {
			b[i] = ' '
		}
	}
	const ellipsis = "…"
	if len(b) > MaxMessage {
		cut := MaxMessage - len(ellipsis)
		for cut > 0 && !utf8.RuneStart(b[cut]) {
			cut--
		}
		b = append(b[:cut:cut], ellipsis...)
	}
	return string(b)
}

func isControl(c byte) bool { return c == '\r' || c == '\n' || c < 0x20 && c != '\t' || c == 0x7f }

// Package contract is regcap's wire contract, in one place: the three
// kubewarden/oci capabilities, the NATS subjects they are served on, the
// header names, the cache outcomes and the one error type every front
// answers with. It is a leaf: it imports nothing of regcap's, so that the
// worker, the client and the tools all speak it without copies.
//
// docs/contract.md describes the same contract for people.
package contract

import (
	"errors"
	"fmt"
	"strings"
)

// Function is a waPC operation of the kubewarden/oci namespace.
type Function string

// The three capabilities.
const (
	ManifestDigest    Function = "v1/manifest_digest"
	OCIManifest       Function = "v1/oci_manifest"
	OCIManifestConfig Function = "v1/oci_manifest_config"
)

// Functions lists every capability, in contract order.
func Functions() []Function { return []Function{ManifestDigest, OCIManifest, OCIManifestConfig} }

// ParseOperation returns the Function whose waPC operation is op
// ("v1/manifest_digest"), or false for any other operation.
func ParseOperation(op string) (Function, bool) {
	switch f := Function(op); f {
	case ManifestDigest, OCIManifest, OCIManifestConfig:
		return f, true
	}
	return "", false
}

// Subject is the NATS subject the function is served on:
// <prefix>.oci.v1.manifest_digest.
func (f Function) Subject(prefix string) string {
	return prefix + ".oci." + strings.ReplaceAll(string(f), "/", ".")
}

// Name is the operation without its version, as used in cache keys,
// metrics and service discovery: "manifest_digest".
func (f Function) Name() string { return strings.TrimPrefix(string(f), "v1/") }

// Defaults of the NATS side of the contract.
const (
	// DefaultSubjectPrefix is the prefix of the subjects served.
	DefaultSubjectPrefix = "kubewarden"
	// DefaultQueueGroup is the queue group a fleet's workers share.
	DefaultQueueGroup = "regcap"
)

// MaxPayload is the largest request payload accepted, in bytes.
const MaxPayload = 4 << 10

// Header names.
const (
	// HeaderCache carries the Outcome of a successful answer.
	HeaderCache = "Regcap-Cache"
	// HeaderPlatform asks oci_manifest_config for a platform:
	// os/arch[/variant].
	HeaderPlatform = "Regcap-Platform"
	// HeaderErrorCode and HeaderError carry an error answer, in the NATS
	// service-framework convention (`nats req` and micro clients read
	// them).
	HeaderErrorCode = "Nats-Service-Error-Code"
	HeaderError     = "Nats-Service-Error"
	// HeaderRetryAfter is the registry's Retry-After, on 429.
	HeaderRetryAfter = "Retry-After"
	// HeaderAge is how many seconds ago a stale answer was fetched.
	HeaderAge = "Regcap-Age"
	// HeaderAck, on a request, names a subject the worker publishes an
	// empty message to when it takes a request it cannot answer at once
	// (docs/contract.md, "Acknowledgement").
	HeaderAck = "Regcap-Ack"
)

// AckSuffix ends the only acknowledgement subject a worker publishes to:
// the request's reply subject followed by it (HeaderAck names it). So a
// caller can make a worker publish nowhere it could not already have it
// reply to, and not to another service's subject with the worker's
// permissions.
const AckSuffix = ".ack"

// AckReplyToken, as the last token of a request's reply subject, asks
// for the acknowledgement as HeaderAck does, on the reply subject
// followed by AckSuffix, without a header: a request with no header at
// all costs nothing to decode, which a memory hit would otherwise pay.
const AckReplyToken = "regcap-ack"

// Outcome says where a successful answer came from. It is sent in the
// HeaderCache header.
type Outcome string

// The cache outcomes.
const (
	// Hit: from the cache, in memory or in Redis.
	Hit Outcome = "hit"
	// Miss: fetched from the registry for this request.
	Miss Outcome = "miss"
	// Shared: from a fetch another request, or another worker, was
	// already making.
	Shared Outcome = "shared"
	// Stale: past its TTL, served because the registry failed (429, 5xx,
	// a timeout, unreachable); HeaderAge says how old it is.
	Stale Outcome = "stale"
)

// Error is an error answer: a code of the contract's table (see Codes)
// and a one-line message naming the image and the cause. Its JSON form,
// {"code":…,"message":…[,"retry_after":…]}, is the HTTP front's error
// body and the fleet lock's failure notice.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	// RetryAfter is the registry's Retry-After, verbatim (429 only).
	RetryAfter string `json:"retry_after,omitempty"`
}

// Codes lists the contract's error codes, in order. CodeInternal is
// answered only for an error nothing classified: a bug in regcap.
func Codes() []int { return []int{400, 401, 403, 404, 413, 415, 429, CodeInternal, 502, 503, 504} }

// CodeInternal is the code of an error that reached a front without a
// code: a bug behind the front, said as such rather than dropped or
// blamed on the registry.
const CodeInternal = 500

// ValidCode reports whether code is in the contract's table.
func ValidCode(code int) bool {
	for _, c := range Codes() {
		if c == code {
			return true
		}
	}
	return false
}

// MaxMessage bounds an error message, in bytes: an error reply travels in
// a header, and must fit where the answer did not.
const MaxMessage = 1 << 10

// Errorf returns an *Error with a formatted message.
func Errorf(code int, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string { return fmt.Sprintf("error %d: %s", e.Code, e.Message) }

// AsError returns the *Error in err's chain, for a front to answer with.
// An error that carries none is a bug behind the front: CodeInternal says
// so rather than dropping it.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return Errorf(CodeInternal, "internal error: %v", err)
}

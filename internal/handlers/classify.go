package handlers

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/registry"
)

// errorf returns a contract error whose message names image (when there
// is one) and then the cause.
func errorf(code int, image, format string, args ...any) *contract.Error {
	return &contract.Error{Code: code, Message: message(image, fmt.Sprintf(format, args...))}
}

func message(image, cause string) string {
	if image == "" {
		return cause
	}
	return image + ": " + cause
}

// Classify turns any error of a fetch for image into a contract error. It
// is the one place codes are decided for upstream failures: Fetch calls it
// where the fetch ends, and nothing downstream classifies again (the
// registry package's tests call it to see what a failure becomes).
func Classify(image string, err error) *contract.Error {
	var ce *contract.Error
	if errors.As(err, &ce) {
		return ce
	}
	e := &failure{Code: 502}
	var (
		se      *registry.StatusError
		te      *transport.Error
		netErr  net.Error
		certErr *tls.CertificateVerificationError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		recErr  tls.RecordHeaderError
		ae      *registry.AccessError
	)
	switch {
	case errors.Is(err, registry.ErrDenied):
		// Before the network cases: a guard refusal surfaces as a dial
		// error, but it is policy, not an unreachable registry.
		e.Code, e.Cause = 403, rootCause(err)
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout()):
		e.Code, e.Cause = 504, "registry did not answer in time"
	case errors.Is(err, context.Canceled):
		e.Code, e.Cause = 503, "request cancelled: the worker is shutting down"
	case errors.Is(err, registry.ErrTooLarge):
		e.Code, e.Cause = 413, rootCause(err)
	case errors.Is(err, registry.ErrDigestMismatch):
		e.Cause = "registry sent corrupt content: " + rootCause(err)
	case errors.As(err, &se):
		e.Code, e.Cause = statusCode(se.StatusCode), se.Error()
		if se.Elsewhere && (se.StatusCode == 401 || se.StatusCode == 403) {
			// Blob storage refusing a (presigned) redirect is an upstream
			// fault, not the registry refusing us.
			e.Code = 502
		}
		if se.StatusCode == http.StatusTooManyRequests {
			e.RetryAfter = se.RetryAfter
			e.Cause = "registry rate-limited us" + retryAfterText(se.RetryAfter)
		}
	case errors.As(err, &te):
		e.Code, e.Cause = statusCode(te.StatusCode), rootCause(err)
	case errors.As(err, &certErr) || errors.As(err, &unknown) || errors.As(err, &host) || errors.As(err, &recErr):
		e.Cause = "TLS handshake with " + tlsHost(err) + " failed: " + rootCause(err) +
			" (add the registry's CA to source_authorities, or the host to insecure_sources)"
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		// net/http's error for this has no type to match.
		e.Cause = "registry speaks plain HTTP: " + rootCause(err) + " (add the host to insecure_sources to allow plain HTTP)"
	case errors.As(err, &netErr):
		e.Cause = "registry unreachable: " + rootCause(err)
	default:
		e.Cause = rootCause(err)
	}
	var we *registry.EndpointsError
	if errors.As(err, &we) && len(we.Attempts) > 1 && !strings.Contains(e.Cause, "endpoints tried") {
		// Mirrors: the answer names every endpoint tried, not the last.
		e.Cause += " (" + we.Tried() + ")"
	}
	if errors.As(err, &ae) && (e.Code == 401 || e.Code == 403) {
		e.Cause = accessCause(ae, e.Code) + ": " + e.Cause
	} else if e.Code == 401 && !strings.Contains(e.Cause, "credentials") {
		e.Cause = "registry refused our credentials or asked for some: " + e.Cause
	}
	return &contract.Error{Code: e.Code, Message: message(image, e.Cause), RetryAfter: e.RetryAfter}
}

// failure is a classification under way.
type failure struct {
	Code       int
	Cause      string
	RetryAfter string
}

// accessCause says why a registry refused us, and whether we had
// credentials for it, without ever showing them.
func accessCause(ae *registry.AccessError, code int) string {
	switch {
	case code == 401 && ae.CredentialsFound:
		return "registry " + ae.Registry + " refused the credentials configured for it"
	case code == 401:
		return "registry " + ae.Registry + " asked for credentials and none were found for it (add an entry for " + ae.Registry + " to the docker config)"
	case ae.CredentialsFound:
		return "registry " + ae.Registry + " denied access with the credentials configured for it"
	default:
		return "registry " + ae.Registry + " denied anonymous access (no credentials were found for it)"
	}
}

func statusCode(status int) int {
	switch status {
	case 401, 403, 404, 429:
		return status
	}
	return 502
}

func retryAfterText(v string) string {
	if d, ok := contract.ParseRetryAfter(v, time.Now()); ok {
		return fmt.Sprintf(", retry after %s (Retry-After: %s)", d, v)
	}
	return ", no Retry-After given"
}

// rootCause is err's message on one line, without Go's URL-error noise.
func rootCause(err error) string {
	s := strings.Join(strings.Fields(err.Error()), " ")
	if len(s) > 400 {
		s = s[:400] + "…"
	}
	return s
}

// tlsHost names the host a TLS failure was with, from the URL error Go's
// HTTP client wraps it in.
func tlsHost(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil && u.Host != "" {
			return u.Host
		}
	}
	return "the registry"
}

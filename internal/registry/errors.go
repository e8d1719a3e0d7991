package registry

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Sentinel errors; callers match them with errors.Is.
var (
	// ErrTooLarge is returned when a body exceeds its limit.
	ErrTooLarge = errors.New("body over the size limit")
	// ErrDigestMismatch is returned when a body does not hash to the
	// digest it was asked for or announced with.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrInsecureScheme is returned when plain HTTP would be used for a
	// registry that is neither loopback nor listed as insecure.
	ErrInsecureScheme = errors.New("plain HTTP refused")
)

// StatusError is a registry answer with an unexpected HTTP status.
type StatusError struct {
	Method     string
	URL        string // without query or credentials
	StatusCode int
	// RetryAfter is the registry's Retry-After header, verbatim.
	RetryAfter string
	// Detail is what the registry said in its error body, if anything.
	Detail string
	// Elsewhere is set when the answer came from another host than the
	// registry (blob storage, after a redirect): its 401 or 403 is not
	// the registry's access decision.
	Elsewhere bool
}

func (e *StatusError) Error() string {
	who := "registry"
	if e.Elsewhere {
		who = "blob storage (redirect target)"
	}
	msg := fmt.Sprintf("%s %s: %s answered %d %s", e.Method, e.URL, who, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// AccessError is a registry refusing access (401 or 403), with whether
// credentials were configured for that registry, so that the answer can
// tell "wrong credentials" from "no credentials". It never holds the
// credentials themselves.
type AccessError struct {
	Registry         string
	StatusCode       int
	CredentialsFound bool
	Err              error
}

func (e *AccessError) Error() string { return e.Err.Error() }

// Unwrap returns the registry's error.
func (e *AccessError) Unwrap() error { return e.Err }

// accessError wraps err in an *AccessError when it is a 401 or 403.
func accessError(registry string, found bool, err error) error {
	status := 0
	var (
		se *StatusError
		te *transport.Error
	)
	switch {
	case errors.As(err, &se):
		status = se.StatusCode
	case errors.As(err, &te):
		status = te.StatusCode
	}
	if status != http.StatusUnauthorized && status != http.StatusForbidden {
		return err
	}
	return &AccessError{Registry: registry, StatusCode: status, CredentialsFound: found, Err: err}
}

// redactURLError drops the query and fragment from the URL of the
// *url.Error in err: a redirect to blob storage carries a presigned URL
// (X-Amz-Signature=…) that must not reach answers or logs.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
			ue.URL = u.String()
		} else if i := strings.IndexAny(ue.URL, "?#"); i >= 0 {
			ue.URL = ue.URL[:i]
		}
	}
	return err
}

func statusError(resp *http.Response) *StatusError {
	se := &StatusError{
		Method:     resp.Request.Method,
		URL:        resp.Request.URL.Scheme + "://" + resp.Request.URL.Host + resp.Request.URL.Path,
		StatusCode: resp.StatusCode,
		RetryAfter: resp.Header.Get("Retry-After"),
	}
	if resp.Request.Method != http.MethodHead {
		// ggcr parses the registry's {"errors":[…]} body for us.
		if terr := transport.CheckError(resp); terr != nil {
			var te *transport.Error
			if errors.As(terr, &te) && len(te.Errors) > 0 {
				parts := make([]string, 0, len(te.Errors))
				for _, d := range te.Errors {
					// Diagnostic.String appends Detail with %v, which
					// for the usual map reads "map[Tag:v1]": kept only
					// when the registry sent it as text.
					part := string(d.Code) + ": " + d.Message
					if detail, ok := d.Detail.(string); ok && detail != "" {
						part += " (" + detail + ")"
					}
					parts = append(parts, part)
				}
				se.Detail = oneLine(strings.Join(parts, "; "))
			}
		}
	}
	return se
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

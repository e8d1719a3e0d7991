package httpfront

import (
	"fmt"

	"github.com/regcap/regcap/contract"
)

// failure is the error a front answers for err: its *contract.Error, or
// CodeInternal when it has none, a nil one, or a code outside the
// contract's table. A code from elsewhere (a forged fleet notice, a bug)
// would otherwise reach WriteHeader, which panics outside 100-999, or
// tell a client something the contract never says. The message is kept
// to one bounded line, as on NATS.
func failure(err error) *contract.Error {
	ce := contract.AsError(err)
	switch {
	case ce == nil:
		return contract.Errorf(contract.CodeInternal, "internal error: a nil error answer")
	case !contract.ValidCode(ce.Code):
		return &contract.Error{Code: contract.CodeInternal, Message: contract.Bound(fmt.Sprintf("internal error: code %d outside the contract: %s", ce.Code, ce.Message))}
	case contract.Bound(ce.Message) != ce.Message:
		return &contract.Error{Code: ce.Code, Message: contract.Bound(ce.Message), RetryAfter: ce.RetryAfter}
	}
	return ce
}

// itemError is a failure as a Gatekeeper item's error: "<code>: <message>".
func itemError(ce *contract.Error) string { return fmt.Sprintf("%d: %s", ce.Code, ce.Message) }

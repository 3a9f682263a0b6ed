package pillion

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Error is a non-2xx answer from the sidecar.
type Error struct {
	// StatusCode is the HTTP status, for example 409 for an ETag mismatch.
	StatusCode int
	// ErrorCode is daprd's code, for example "ERR_STATE_SAVE"; empty when the body was not
	// JSON (a wrong API token is answered in plain text).
	ErrorCode string
	Message   string
	// Details holds the google.rpc detail objects of a rich error.
	Details []map[string]any
	// Body is the answer as it came.
	Body   []byte
	Method string
	Path   string
}

func (e *Error) Error() string {
	code := e.ErrorCode
	if code == "" {
		code = "error"
	}
	return fmt.Sprintf("pillion: %s %s: %d %s: %s", e.Method, e.Path, e.StatusCode, code, e.Message)
}

// ErrorCode returns daprd's errorCode if err is (or wraps) an *Error, and "" otherwise.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.ErrorCode
	}
	return ""
}

// StatusCode returns the HTTP status if err is (or wraps) an *Error, and 0 otherwise.
func StatusCode(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.StatusCode
	}
	return 0
}

func newError(method, path string, status int, body []byte) *Error {
	e := &Error{StatusCode: status, Body: body, Method: method, Path: path, Message: strings.TrimSpace(string(body))}
	var parsed struct {
		ErrorCode string           `json:"errorCode"`
		Message   string           `json:"message"`
		Details   []map[string]any `json:"details"`
	}
	if json.Unmarshal(body, &parsed) == nil {
		e.ErrorCode, e.Details = parsed.ErrorCode, parsed.Details
		if parsed.Message != "" {
			e.Message = parsed.Message
		}
	}
	if e.Message == "" {
		e.Message = fmt.Sprintf("sidecar answered %d", status)
	}
	return e
}
